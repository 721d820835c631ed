"""Checks of each host's merged data (group defaults + inventory overrides).

Every problem names the host, the field and the fix. Run before any host is contacted.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

from autocode.agents import AgentFactory

HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
PORT_FIELDS_SUFFIX = "_port"
PEM_CERT = b"-----BEGIN CERTIFICATE-----"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_host(name: str, role: str, data: dict[str, Any]) -> list[str]:
    """Problems with one host's data, each a complete sentence with the fix."""
    problems: list[str] = []

    def bad(field: str, msg: str) -> None:
        problems.append(f"{role} {name!r}: {field}: {msg}")

    if not HOSTNAME.match(name):
        bad("name", f"{name!r} is not a valid host name; use lowercase letters, digits and "
            "dashes, e.g. worker1")

    for field, value in sorted(data.items()):
        if field.endswith(PORT_FIELDS_SUFFIX) and not field.startswith("ssh_"):
            if not (isinstance(value, int) and not isinstance(value, bool)
                    and 1 <= value <= 65535):
                bad(field, f"{value!r} is not a port; use a whole number from 1 to 65535")
    ssh_port = data.get("ssh_port", 22)
    if not (isinstance(ssh_port, int) and not isinstance(ssh_port, bool)
            and 1 <= ssh_port <= 65535):
        bad("ssh.port", f"{ssh_port!r} is not a port; use a whole number from 1 to 65535")

    budget = data.get("daily_budget_usd")
    if not _is_number(budget) or budget <= 0:
        bad("daily_budget_usd", f"{budget!r} is not a positive number; set the daily "
            "budget in USD, e.g. daily_budget_usd: 25")

    if role == "worker":
        kinds = sorted(AgentFactory.AGENTS)
        agent = data.get("agent_type")
        if agent not in AgentFactory.AGENTS:
            bad("agent_type", f"unknown agent type {agent!r}; use one of: {', '.join(kinds)}")

    key = data.get("ssh_key")
    if key is not None and not Path(str(key)).expanduser().is_file():
        bad("ssh.key", f"SSH key file {key} does not exist; create it (ssh-keygen -t ed25519 "
            f"-f {key}) or point ssh.key at your private key")
    known = data.get("ssh_known_hosts_file")
    if known is not None and not Path(str(known)).expanduser().is_file():
        bad("ssh.known_hosts", f"known_hosts file {known} does not exist; create it with "
            "ssh-keyscan from a trusted network, or drop the field")

    certs = data.get("extra_ca_certs") or []
    if not isinstance(certs, list):
        bad("extra_ca_certs", "must be a list of certificate file paths")
        certs = []
    for cert in certs:
        path = Path(str(cert)).expanduser()
        if not path.is_file():
            bad("extra_ca_certs", f"{cert} does not exist; give the path of a PEM "
                "certificate on the control machine")
        elif PEM_CERT not in path.read_bytes()[:65536]:
            bad("extra_ca_certs", f"{cert} is not a PEM certificate (no '-----BEGIN "
                "CERTIFICATE-----'); convert it with `openssl x509 -outform PEM`")
        elif not path.name.endswith(".crt"):
            bad("extra_ca_certs", f"{cert}: name it *.crt, as update-ca-certificates "
                "only reads those")

    if data.get("worker_network") is None:
        bad("worker_network", "missing; the firewall needs the workers' network: set it "
            "under data:, e.g. worker_network: 10.0.1.0/24")
    for field in ("worker_network", "worker_network6"):
        value = data.get(field)
        if value is not None:
            try:
                ipaddress.ip_network(str(value))
            except ValueError:
                bad(field, f"{value!r} is not a network; write it as an address/prefix, "
                    "e.g. 10.0.1.0/24")

    root = data.get("data_root")
    if not (isinstance(root, str) and root.startswith("/") and root != "/"):
        bad("data_root", f"{root!r} must be an absolute path other than /, e.g. "
            "/mnt/data/autocode")
    return problems
