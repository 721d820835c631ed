"""Last in the session: a lab whose every systemd-nspawn was killed with SIGKILL (as after
a crash) is still removed completely by `down`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lab import machines
from lab.config import PREFIX

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]


def leftovers(lab) -> dict[str, list]:
    cfg = lab.cfg
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True,
                                      text=True).stdout)
    netns = Path("/run/netns")
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    rules6 = subprocess.run(["ip6tables-save"], capture_output=True, text=True).stdout
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    return {
        "processes": machines.container_pids(cfg),
        "interfaces": [x["ifname"] for x in links if x["ifname"].startswith(PREFIX)],
        "namespaces": [p.name for p in netns.glob(f"{PREFIX}-*")] if netns.exists() else [],
        "firewall rules": [line for line in (rules + rules6).splitlines()
                           if cfg.nat_chain in line],
        "routes": [line for line in routes.splitlines() if cfg.worker_net in line],
        "cgroups": [str(p) for p in machines._cgroup_dirs() if p.exists()],
    }


def test_down_after_kill9_leaves_nothing(lab):
    if os.environ.get("AUTOCODE_LAB_KEEP"):
        pytest.skip("AUTOCODE_LAB_KEEP is set: the lab stays up")
    killed = 0
    for pid in lab.status().values():
        if pid:
            os.kill(pid, signal.SIGKILL)
            killed += 1
    assert killed == len(lab.hosts)
    # The containers' systemds outlive their killed nspawn: exactly what down must find.
    assert machines.container_pids(lab.cfg)
    subprocess.run([sys.executable, "-m", "lab", "down"], cwd=REPO, check=True, timeout=300)
    assert leftovers(lab) == {k: [] for k in leftovers(lab)}
