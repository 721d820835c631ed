"""What a component declares to the rest of the deploy (the contract: tasks/__init__.py).

A component's module in `tasks/` holds one `COMPONENT = Component(...)`; base, network,
the runtime install and validation collect these declarations (`infra/components.py`,
given the roles' lists), so nothing about a component is written anywhere but in its own
module and its settings model (`settings/<component>.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .settings import NoSettings, Settings

ROLES = ("orchestrator", "worker")
# (owner, group, mode) of a folder under data_root, keyed by its path relative to it.
FolderSpec = tuple[str, str, str]


def _none(settings: Any) -> tuple:
    return ()


def _no_private(settings: Any) -> Mapping[int, Iterable[str]]:
    return {}


def _no_pins(settings: Any, python: list[int] | None) -> Iterable[str]:
    return ()


@dataclass(frozen=True)
class Component:
    """
    + name: how messages and the README name it (its module is tasks/<name>.py)
    + settings: its typed settings model (infra/settings.py); group data's defaults come
      from its fields, and the validation pass checks a host's data against it before any
      host is contacted
    + system_users: per role, the system accounts it needs (base creates them first)
    + data_tree: per role, folders under data_root it writes, with owner, group and mode
    + worker_ports: TCP ports on the orchestrator that workers may reach for it (network
      opens them on both firewalls), from its settings
    + management_ports: TCP ports on the orchestrator that, besides workers allowed by
      worker_ports, only the management networks may reach (network drops the rest)
    + private_ports: TCP ports on the orchestrator that only loopback and the networks
      listed for each may reach ({port: [network, ...]}; an empty list: loopback only),
      for services without authentication of their own; workers never
    + runtime_extras: per role, extras of the autocode runtime it needs on that host
    + runtime_pins: requirement pins it needs in the runtime's virtualenv, from its
      settings and the host's python3 version ([major, minor], or None)
    + certificate_authority: it is the platform CA, whose certificates the role's
      services may use for TLS (a role without it runs them in plain text)
    """

    name: str
    settings: type[Settings] = NoSettings
    system_users: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    data_tree: Mapping[str, Mapping[str, FolderSpec]] = field(default_factory=dict)
    worker_ports: Callable[[Any], Iterable[int]] = _none
    management_ports: Callable[[Any], Iterable[int]] = _none
    private_ports: Callable[[Any], Mapping[int, Iterable[str]]] = _no_private
    runtime_extras: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    runtime_pins: Callable[[Any, list[int] | None], Iterable[str]] = _no_pins
    certificate_authority: bool = False

    def __post_init__(self) -> None:
        for what in ("system_users", "data_tree", "runtime_extras"):
            unknown = set(getattr(self, what)) - set(ROLES)
            if unknown:
                raise ValueError(f"component {self.name}: {what} names unknown roles "
                                 f"{sorted(unknown)}; use {ROLES}")
        unknown = self.settings.roles() - set(ROLES)
        if unknown:
            raise ValueError(f"component {self.name}: settings for unknown roles "
                             f"{sorted(unknown)}; use {ROLES}")

    def needs_runtime(self, role: str) -> bool:
        return role in self.runtime_extras
