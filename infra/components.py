"""Collects what the components of each role declare (infra/component.py): their settings
for group_data, the accounts and data tree base creates, the worker-facing ports network
opens, the runtime extras and pins, and the one validation pass before any connection.

The roles' component lists are given (`Catalogue(...)`, made by roles/): infra/ never
imports roles/ or tasks/.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from autocode.problems import Problems, unknown_names

from .component import ROLES, Component
from .settings import HostSettings, Settings
from .validation import check_connection

# Host data the inventory file itself sets (infra/inventory_file.py), beside settings.
INVENTORY_FIELDS = {"orchestrator_address", "worker_address"}
COLLECTED = ("system_users", "data_tree")
# A role's components, or a callable that gives them.
Listed = Sequence[Component] | Callable[[], Sequence[Component]]


class Catalogue:
    """The components of each role, in the order the role applies them.

    + roles: role -> its components, or a callable giving them (read at each use, so a
      test may change a role's list)
    """

    def __init__(self, roles: Mapping[str, Listed]):
        unknown = set(roles) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}; use {ROLES}")
        self._roles = roles

    def of_role(self, role: str) -> list[Component]:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; use one of {ROLES}")
        listed = self._roles.get(role, ())
        return list(listed() if callable(listed) else listed)

    def every(self) -> list[Component]:
        seen: dict[str, Component] = {}
        for role in ROLES:
            for component in self.of_role(role):
                seen.setdefault(component.name, component)
        return list(seen.values())

    def has_certificate_authority(self, role: str) -> bool:
        """Whether the role has the platform CA, so its services can use TLS."""
        return any(c.certificate_authority for c in self.of_role(role))

    # -- group data -------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """Defaults every host gets (group_data/all.py)."""
        merged: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for component in self.every():
            for role in (None, *ROLES):
                for key, value in component.settings.defaults(role).items():
                    if key in owner and owner[key] != component.name:
                        raise ValueError(f"setting {key!r} is declared by two components "
                                         f"({owner[key]}, {component.name}); one owns it")
                    owner[key] = component.name
                    if role is None:
                        merged[key] = value
        return merged

    def role_settings(self, role: str) -> dict[str, Any]:
        """Defaults for one role (group_data/orchestrator.py, group_data/workers.py),
        including the accounts and data tree its components collect."""
        merged: dict[str, Any] = {}
        for component in self.of_role(role):
            merged.update(component.settings.defaults(role))
        merged["system_users"] = self.system_users(role)
        merged["data_tree"] = self.data_tree(role)
        return merged

    def system_users(self, role: str) -> list[str]:
        users: list[str] = []
        for component in self.of_role(role):
            users += [u for u in component.system_users.get(role, ()) if u not in users]
        return users

    def data_tree(self, role: str) -> dict[str, tuple[str, str, str]]:
        tree: dict[str, tuple[str, str, str]] = {}
        for component in self.of_role(role):
            for rel, spec in component.data_tree.get(role, {}).items():
                if rel in tree and tree[rel] != spec:
                    raise ValueError(f"data folder {rel!r}: {component.name} wants {spec}, "
                                     f"another component {tree[rel]}; one owns it")
                tree[rel] = spec
        return tree

    # -- what the orchestrator's firewall opens ---------------------------------------

    def _orchestrator_components(self, data: Mapping[str, Any]):
        for component in self.of_role("orchestrator"):
            yield component, component.settings.from_data(data)

    def worker_ports(self, data: Mapping[str, Any]) -> list[int]:
        """TCP ports on the orchestrator that workers may reach: every component's, so both
        ends of the firewall agree whichever role is being applied."""
        ports: set[int] = set()
        for component, settings in self._orchestrator_components(data):
            ports.update(component.worker_ports(settings))
        return sorted(ports)

    def management_ports(self, data: Mapping[str, Any]) -> list[int]:
        """TCP ports on the orchestrator that only the management networks (and the workers
        their worker_ports allow) may reach."""
        ports: set[int] = set()
        for component, settings in self._orchestrator_components(data):
            ports.update(component.management_ports(settings))
        return sorted(ports)

    def private_ports(self, data: Mapping[str, Any]) -> dict[int, list[str]]:
        """TCP ports on the orchestrator that only loopback and the listed networks may
        reach."""
        ports: dict[int, list[str]] = {}
        for component, settings in self._orchestrator_components(data):
            for port, nets in component.private_ports(settings).items():
                ports.setdefault(port, [])
                ports[port] += [n for n in nets if n not in ports[port]]
        return dict(sorted(ports.items()))

    # -- the runtime install ----------------------------------------------------------

    def runtime_needs(self, role: str, data: Mapping[str, Any], python: list[int] | None = None
                      ) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """(extras, pins) of the one runtime install on a host of this role whose python3
        is `python`, or None when no component of the role needs the runtime."""
        needing = [c for c in self.of_role(role) if c.needs_runtime(role)]
        if not needing:
            return None
        extras = sorted({e for c in needing for e in c.runtime_extras[role]})
        pins = sorted({p for c in needing
                       for p in c.runtime_pins(c.settings.from_data(data), python)})
        return tuple(extras), tuple(pins)

    # -- the validation pass ----------------------------------------------------------

    def known_fields(self) -> set[str]:
        # Common `data:` reaches every host, so a setting of any role is known on all.
        fields = set(INVENTORY_FIELDS) | set(COLLECTED)
        for component in self.every():
            fields |= set(component.settings.model_fields)
        return fields

    def check_host(self, name: str, role: str, data: Mapping[str, Any]) -> list[str]:
        """Every problem with one host's merged data: connection fields, unknown settings,
        each component's settings, then the rules that span fields."""
        problems = Problems()
        check_connection(problems, name, data)
        unknown_names(problems, [f for f in data if not f.startswith(("ssh_", "_"))],
                      self.known_fields(), "no component has this setting",
                      "Remove it, or see the settings in settings/<component>.py")
        view = HostSettings(data, role, name)
        passed: list[Settings] = []
        for component in self.of_role(role):
            model = component.settings
            if model in view._models:
                continue
            settings = model.parse(data, problems, role)
            view._models[model] = settings
            if settings is not None:
                passed.append(settings)
        for settings in passed:
            settings.rules(problems, view)
        return problems.lines(f"{role} {name!r}: ")
