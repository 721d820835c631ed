"""What a component declares to the rest of the deploy (the contract: tasks/__init__.py).

A component's module in `tasks/` holds one `COMPONENT = Component(...)`; base, network,
the runtime install and validation collect these declarations (`infra/components.py`), so
nothing about a component is written anywhere but in its own module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .validation import Problems

ROLES = ("orchestrator", "worker")
# (owner, group, mode) of a folder under data_root, keyed by its path relative to it.
FolderSpec = tuple[str, str, str]


def _no_check(problems: Problems, role: str, data: Mapping[str, Any]) -> None:
    return None


def _no_ports(data: Mapping[str, Any]) -> Iterable[int]:
    return ()


def _no_private(data: Mapping[str, Any]) -> Mapping[int, Iterable[str]]:
    return {}


def _no_pins(data: Mapping[str, Any]) -> Iterable[str]:
    return ()


@dataclass(frozen=True)
class Component:
    """
    + name: how messages and the README name it
    + settings: defaults for every host, each overridable in an inventory's `data:`
    + role_settings: defaults for one role only, {"orchestrator": {...}, "worker": {...}}
    + check: adds a Problem for each bad setting (host, field, fix); runs before any host
      is contacted, with the host's merged data
    + system_users: per role, the system accounts it needs (base creates them first)
    + data_tree: per role, folders under data_root it writes, with owner, group and mode
    + worker_ports: TCP ports on the orchestrator that workers may reach for it (network
      opens them on both firewalls), from the host's data
    + management_ports: TCP ports on the orchestrator that, besides workers allowed by
      worker_ports, only the management networks may reach (network drops the rest)
    + private_ports: TCP ports on the orchestrator that only loopback and the networks
      listed for each may reach ({port: [network, ...]}; an empty list: loopback only),
      for services without authentication of their own; workers never
    + runtime_extras: per role, extras of the autocode runtime it needs on that host
    + runtime_pins: requirement pins it needs in the runtime's virtualenv, from the data
    """

    name: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    role_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    check: Callable[[Problems, str, Mapping[str, Any]], None] = _no_check
    system_users: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    data_tree: Mapping[str, Mapping[str, FolderSpec]] = field(default_factory=dict)
    worker_ports: Callable[[Mapping[str, Any]], Iterable[int]] = _no_ports
    management_ports: Callable[[Mapping[str, Any]], Iterable[int]] = _no_ports
    private_ports: Callable[[Mapping[str, Any]], Mapping[int, Iterable[str]]] = _no_private
    runtime_extras: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    runtime_pins: Callable[[Mapping[str, Any]], Iterable[str]] = _no_pins

    def __post_init__(self) -> None:
        for what in ("role_settings", "system_users", "data_tree", "runtime_extras"):
            unknown = set(getattr(self, what)) - set(ROLES)
            if unknown:
                raise ValueError(f"component {self.name}: {what} names unknown roles "
                                 f"{sorted(unknown)}; use {ROLES}")
        clash = set(self.settings) & {k for s in self.role_settings.values() for k in s}
        if clash:
            raise ValueError(f"component {self.name}: {sorted(clash)} set both for every "
                             "host and per role; declare each setting once")

    def needs_runtime(self, role: str) -> bool:
        return role in self.runtime_extras
