"""Reading an autocode inventory file into pyinfra groups, validated before any connection.

Format (YAML):

    ssh:                # connection defaults for every host (each may override its own)
      user: root
      port: 22
      key: ~/.ssh/id_ed25519
      known_hosts: ~/.ssh/known_hosts     # optional; strict host key checking when set
    data:               # overrides of group_data defaults, for every host
      worker_network: 10.0.1.0/24
      extra_ca_certs: [/usr/local/share/ca-certificates/corp.crt]
    orchestrator:       # exactly one host
      name: orchestrator
      address: 10.0.0.10
      worker_address: 10.0.1.1           # its address on the workers' network
      data: {...}                        # overrides for this host only
    workers:            # one or more
      - name: worker1
        address: 10.0.1.11
        agent_type: claude-code
        daily_budget_usd: 25

Inventory values go into host data, which pyinfra ranks above group data, so they override
the defaults in group_data/.
"""

from __future__ import annotations

import ipaddress
import os
import runpy
from pathlib import Path
from typing import Any

import yaml

from .components import Catalogue
from .errors import InventoryError

LAB_INVENTORY = Path(os.environ.get("AUTOCODE_LAB_DIR", "/var/lib/autocode-lab")) / "inventory.yaml"
GROUP_DATA = Path(__file__).resolve().parent.parent / "group_data"

TOP_KEYS = {"ssh", "data", "orchestrator", "workers", "lab"}
HOST_KEYS = {"name", "address", "ssh", "data"}
ORCH_KEYS = HOST_KEYS | {"worker_address"}
WORKER_KEYS = HOST_KEYS | {"agent_type", "daily_budget_usd"}
SSH_KEYS = {"user": "ssh_user", "port": "ssh_port", "key": "ssh_key",
            "known_hosts": "ssh_known_hosts_file"}
GROUPS = {"orchestrator": "orchestrator", "worker": "workers"}


def inventory_path() -> Path:
    return Path(os.environ.get("AUTOCODE_INVENTORY") or LAB_INVENTORY)


def group_defaults(group: str) -> dict[str, Any]:
    """What pyinfra will load from group_data/ for a host of this group."""
    merged: dict[str, Any] = {}
    for name in ("all", group):
        module = runpy.run_path(str(GROUP_DATA / f"{name}.py"))
        merged.update({k: v for k, v in module.items() if not k.startswith("_")
                       and not callable(v) and type(v).__name__ != "module"})
    return merged


def load(catalogue: Catalogue, path: Path | None = None) -> dict[str, list]:
    """Return pyinfra groups {'orchestrator': [...], 'workers': [...]} or raise, every host
    checked against the catalogue's components (roles.CATALOGUE)."""
    path = path or inventory_path()
    if not path.is_file():
        raise InventoryError(str(path), [
            "no inventory file here. Either bring up the local lab, which writes this file "
            "(`make lab`, or `python -m lab up` as root), or point AUTOCODE_INVENTORY at "
            "your own inventory YAML (format in README.md, section 'Inventory')"
        ])
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InventoryError(str(path), [f"not valid YAML: {exc}"]) from None
    problems: list[str] = []
    hosts = parse_hosts(doc, problems)
    if not problems:
        _check_cross_host(hosts, problems)
        for name, role, data in hosts:
            problems += catalogue.check_host(name, role, {**group_defaults(GROUPS[role]), **data})
    if problems:
        raise InventoryError(str(path), problems)
    groups: dict[str, list] = {"orchestrator": [], "workers": []}
    for name, role, data in hosts:
        groups[GROUPS[role]].append((name, data))
    return groups


def parse_hosts(doc: Any, problems: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, role, host data) of each host of an inventory document, its problems added to
    `problems`; settings are not checked here (Catalogue.check_host does)."""
    if not isinstance(doc, dict):
        problems.append("the file must be a mapping with 'orchestrator' and 'workers'")
        return []
    for key in sorted(set(doc) - TOP_KEYS):
        problems.append(f"{key}: unknown top-level field; allowed: {', '.join(sorted(TOP_KEYS))}")

    common_ssh = _ssh_data("ssh", doc.get("ssh") or {}, problems)
    common = doc.get("data") or {}
    if not isinstance(common, dict):
        problems.append("data: must be a mapping of field: value")
        common = {}

    orch = doc.get("orchestrator")
    if orch is None:
        problems.append("orchestrator: missing; name exactly one orchestrator host")
        orch_hosts = []
    elif isinstance(orch, list):
        if len(orch) != 1:
            problems.append(f"orchestrator: {len(orch)} hosts given; the platform has exactly "
                            "one orchestrator, so list one host")
        orch_hosts = orch[:1]
    else:
        orch_hosts = [orch]

    workers = doc.get("workers")
    if not isinstance(workers, list) or not workers:
        problems.append("workers: no workers; list at least one worker host")
        workers = []

    hosts = []
    orch_addr = None
    for entry in orch_hosts:
        parsed = _host(entry, "orchestrator", "orchestrator", ORCH_KEYS, common_ssh, common,
                       problems)
        if parsed:
            hosts.append(parsed)
            orch_addr = entry.get("worker_address") or entry.get("address")
    for i, entry in enumerate(workers):
        parsed = _host(entry, "worker", f"workers[{i}]", WORKER_KEYS, common_ssh, common,
                       problems)
        if parsed:
            hosts.append(parsed)
    # Every host knows where the orchestrator is; workers reach it on its worker address.
    for _, _, data in hosts:
        data.setdefault("orchestrator_address", orch_addr)
    return hosts


def _ssh_data(where: str, ssh: Any, problems: list[str]) -> dict[str, Any]:
    if not isinstance(ssh, dict):
        problems.append(f"{where}: must be a mapping with user, port, key, known_hosts")
        return {}
    out = {}
    for key, value in ssh.items():
        if key not in SSH_KEYS:
            problems.append(f"{where}.{key}: unknown SSH field; allowed: "
                            f"{', '.join(sorted(SSH_KEYS))}")
            continue
        if key in ("key", "known_hosts") and isinstance(value, str):
            value = str(Path(value).expanduser())
        out[SSH_KEYS[key]] = value
    if "ssh_known_hosts_file" in out:
        out["ssh_strict_host_key_checking"] = "yes"
    return out


def _host(entry: Any, role: str, where: str, allowed: set[str], common_ssh: dict,
          common: dict, problems: list[str]) -> tuple[str, str, dict[str, Any]] | None:
    if not isinstance(entry, dict):
        problems.append(f"{where}: must be a mapping with at least name and address")
        return None
    for key in sorted(set(entry) - allowed):
        problems.append(f"{where}.{key}: unknown field; allowed: {', '.join(sorted(allowed))}")
    name, address = entry.get("name"), entry.get("address")
    if not isinstance(name, str) or not name:
        problems.append(f"{where}.name: missing; give the host a name, e.g. worker1")
        return None
    if not isinstance(address, str) or not address:
        problems.append(f"{where} ({name}).address: missing; give its IP address or DNS name")
        return None
    own = entry.get("data") or {}
    if not isinstance(own, dict):
        problems.append(f"{where} ({name}).data: must be a mapping of field: value")
        own = {}
    data: dict[str, Any] = {**common, **common_ssh,
                            **_ssh_data(f"{where} ({name}).ssh", entry.get("ssh") or {},
                                        problems),
                            **own, "ssh_hostname": address}
    for key in allowed - HOST_KEYS:
        if key in entry:
            data[key] = entry[key]
    return name, role, data


def _check_cross_host(hosts: list[tuple[str, str, dict[str, Any]]], problems: list[str]) -> None:
    seen_names: dict[str, str] = {}
    seen_addrs: dict[str, str] = {}
    for name, _, data in hosts:
        if name in seen_names:
            problems.append(f"host {name!r}: name used twice; give each host its own name")
        seen_names[name] = name
        addr = str(data["ssh_hostname"])
        if addr in seen_addrs:
            problems.append(f"host {name!r}: address {addr} is also {seen_addrs[addr]!r}'s; "
                            "each host needs its own address")
        seen_addrs[addr] = name
    for name, role, data in hosts:
        net = data.get("worker_network")
        # A worker is reached at its address; the orchestrator serves them at its own.
        field = "address" if role == "worker" else "worker_address"
        addr = data["ssh_hostname"] if role == "worker" else data.get("orchestrator_address")
        if not net or not addr:
            continue
        try:
            inside = ipaddress.ip_address(addr) in ipaddress.ip_network(net)
        except ValueError:
            continue  # a DNS name, or a bad network reported by check_host
        if not inside:
            problems.append(f"{role} {name!r}: {field} {addr} is outside worker_network "
                            f"{net}; fix the address or the network")
