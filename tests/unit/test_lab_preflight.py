"""The lab refuses clearly, before touching anything, when it cannot work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab import preflight
from lab.sh import LabError

REPO = Path(__file__).resolve().parents[2]


def test_not_root_says_how(monkeypatch):
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match=r"needs root.*sudo python -m lab up"):
        preflight.check_root()


def test_missing_tools_name_the_packages(monkeypatch):
    missing = {"systemd-nspawn", "debootstrap"}
    monkeypatch.setattr(preflight.shutil, "which",
                        lambda tool: None if tool in missing else f"/usr/bin/{tool}")
    with pytest.raises(LabError) as exc:
        preflight.check_tools()
    assert "missing tools: debootstrap, systemd-nspawn" in str(exc.value)
    assert "apt-get install -y debootstrap systemd-container" in str(exc.value)


def test_bad_worker_count_is_refused_without_a_traceback():
    proc = subprocess.run([sys.executable, "-m", "lab", "up", "--workers", "0"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "lab: --workers must be between 1 and 40"


def test_unknown_host_for_ssh_lists_the_hosts(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lab", "ssh", "worker9", "--", "true"],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={"AUTOCODE_LAB_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1
    assert "no lab host named 'worker9'" in proc.stderr
    assert "orchestrator, internet, worker1, worker2, worker3, worker4" in proc.stderr
    assert "Traceback" not in proc.stderr
