"""Collects what the components of each role declare (infra/component.py): their settings
for group_data, the accounts and data tree base creates, the worker-facing ports network
opens, the runtime extras and pins, and the one validation pass before any connection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .component import ROLES, Component
from .validation import Problems, check_connection

# Host data the inventory file itself sets (infra/inventory_file.py), beside settings.
INVENTORY_FIELDS = {"orchestrator_address", "worker_address"}
COLLECTED = ("system_users", "data_tree")


def _roles():
    # Late import: roles import the task modules, which import pyinfra's deploy API.
    from roles import orchestrator, worker
    return {"orchestrator": orchestrator, "worker": worker}


def of_role(role: str) -> list[Component]:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; use one of {ROLES}")
    return [module.COMPONENT for module in _roles()[role].COMPONENTS]


def every() -> list[Component]:
    seen: dict[str, Component] = {}
    for role in ROLES:
        for component in of_role(role):
            seen.setdefault(component.name, component)
    return list(seen.values())


def settings() -> dict[str, Any]:
    """Defaults every host gets (group_data/all.py)."""
    merged: dict[str, Any] = {}
    for component in every():
        for key, value in component.settings.items():
            if key in merged:
                raise ValueError(f"setting {key!r} is declared by two components; one owns it")
            merged[key] = value
    return merged


def role_settings(role: str) -> dict[str, Any]:
    """Defaults for one role (group_data/orchestrator.py, group_data/workers.py),
    including the accounts and data tree its components collect."""
    merged: dict[str, Any] = {}
    for component in of_role(role):
        merged.update(component.role_settings.get(role, {}))
    merged["system_users"] = system_users(role)
    merged["data_tree"] = data_tree(role)
    return merged


def system_users(role: str) -> list[str]:
    users: list[str] = []
    for component in of_role(role):
        users += [u for u in component.system_users.get(role, ()) if u not in users]
    return users


def data_tree(role: str) -> dict[str, tuple[str, str, str]]:
    tree: dict[str, tuple[str, str, str]] = {}
    for component in of_role(role):
        for rel, spec in component.data_tree.get(role, {}).items():
            if rel in tree and tree[rel] != spec:
                raise ValueError(f"data folder {rel!r}: {component.name} wants {spec}, "
                                 f"another component {tree[rel]}; one owns it")
            tree[rel] = spec
    return tree


def worker_ports(data: Mapping[str, Any]) -> list[int]:
    """TCP ports on the orchestrator that workers may reach: every component's, so both
    ends of the firewall agree whichever role is being applied."""
    ports: set[int] = set()
    for component in of_role("orchestrator"):
        ports.update(component.worker_ports(data))
    return sorted(ports)


def management_ports(data: Mapping[str, Any]) -> list[int]:
    """TCP ports on the orchestrator that only the management networks (and the workers
    their worker_ports allow) may reach."""
    ports: set[int] = set()
    for component in of_role("orchestrator"):
        ports.update(component.management_ports(data))
    return sorted(ports)


def private_ports(data: Mapping[str, Any]) -> dict[int, list[str]]:
    """TCP ports on the orchestrator that only loopback and the listed networks may reach."""
    ports: dict[int, list[str]] = {}
    for component in of_role("orchestrator"):
        for port, nets in component.private_ports(data).items():
            ports.setdefault(port, [])
            ports[port] += [n for n in nets if n not in ports[port]]
    return dict(sorted(ports.items()))


def runtime_needs(role: str, data: Mapping[str, Any]) -> tuple[tuple[str, ...],
                                                                tuple[str, ...]] | None:
    """(extras, pins) of the one runtime install on a host of this role, or None when no
    component of the role needs the runtime."""
    needing = [c for c in of_role(role) if c.needs_runtime(role)]
    if not needing:
        return None
    extras = sorted({e for c in needing for e in c.runtime_extras[role]})
    pins = sorted({p for c in needing for p in c.runtime_pins(data)})
    return tuple(extras), tuple(pins)


def known_fields() -> set[str]:
    # Common `data:` reaches every host, so a setting of any role is known on all.
    fields = set(settings()) | set(INVENTORY_FIELDS) | set(COLLECTED)
    for component in every():
        for role_defaults in component.role_settings.values():
            fields |= set(role_defaults)
    return fields


def check_host(name: str, role: str, data: dict[str, Any]) -> list[str]:
    """Every problem with one host's merged data: connection fields, unknown settings,
    and each component's own checks."""
    problems = Problems(role, name)
    check_connection(problems, data)
    known = known_fields()
    for field in sorted(data):
        if field.startswith(("ssh_", "_")) or field in known:
            continue
        close = sorted(k for k in known if k.split("_")[0] == field.split("_")[0])
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        problems.add(field, f"no component has this setting{hint} Remove it, or see the "
                     "settings in tasks/<component>.py")
    for component in of_role(role):
        component.check(problems, role, data)
    return problems.items
