"""Checks before the lab touches anything: root, and the tools it drives."""

from __future__ import annotations

import os
import shutil

from .sh import LabError

REQUIRED_TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "iptables": "iptables",
    "nft": "nftables",  # a host's reboot empties its namespace's firewall
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}


def check_root() -> None:
    if os.geteuid() != 0:
        raise LabError(
            "the lab needs root: it creates network namespaces, bridges, firewall rules and "
            "containers. Run it as root, e.g. `sudo python -m lab up`."
        )


def check_tools() -> None:
    missing = {tool: pkg for tool, pkg in REQUIRED_TOOLS.items() if not shutil.which(tool)}
    if missing:
        packages = " ".join(sorted(set(missing.values())))
        raise LabError(
            f"missing tools: {', '.join(sorted(missing))}. "
            f"Install them with: apt-get install -y {packages}"
        )
