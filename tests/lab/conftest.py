"""Lab tests: a fresh lab per session, torn down afterwards even when tests fail.

Set AUTOCODE_LAB_KEEP=1 to leave the lab running after the session for a look around,
and AUTOCODE_LAB_REUSE=1 to run against the lab already up instead of fresh hosts (for
iterating on one test; the converge and idempotence figures then mean nothing).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from infra.inventory_file import group_defaults
from lab.api import Lab
from lab.config import LabConfig, default_extra_ca_certs

REPO = Path(__file__).resolve().parents[2]
FIGURES: list[tuple[str, str]] = []


def record(label: str, value: str) -> None:
    FIGURES.append((label, value))
    print(f"[figure] {label}: {value}")


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("lab figures")
        for label, value in FIGURES:
            terminalreporter.write_line(f"{label:48} {value}")


@pytest.fixture(scope="session")
def lab() -> Lab:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (namespaces, bridges, containers)")
    for tool in ("systemd-nspawn", "debootstrap", "iptables"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is missing; `make test` installs it")
    lab = Lab(replace(LabConfig(workers=4), extra_ca_certs=default_extra_ca_certs()))
    if not (os.environ.get("AUTOCODE_LAB_REUSE") and lab.inventory_file.exists()):
        lab.down()  # bare hosts: whatever an earlier session left is thrown away
        record("lab up (fresh hosts)", f"{lab.up():.1f} s")
    try:
        yield lab
    finally:
        if not os.environ.get("AUTOCODE_LAB_KEEP"):
            lab.down()


@pytest.fixture(scope="session")
def defaults() -> dict[str, dict]:
    """The deploy's group data per group, for paths and names the tests look at."""
    return {group: group_defaults(group) for group in ("orchestrator", "workers")}


class Pyinfra:
    """Runs the real CLI against the lab's inventory, as a user would."""

    def __init__(self, lab: Lab):
        self.env = {**os.environ, "AUTOCODE_INVENTORY": str(lab.inventory_file)}

    def run(self, *args: str, timeout: float = 1500) -> tuple[dict, float]:
        started = time.monotonic()
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("pyinfra")), "inventory.py", "deploy.py",
             # -y skips change detection, which a dry plan is for; an apply needs it.
             *([] if "--dry" in args else ["-y"]), "--json", *args],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        elapsed = time.monotonic() - started
        assert proc.returncode == 0, f"pyinfra {args} failed:\n{proc.stderr[-6000:]}"
        return json.loads(proc.stdout), elapsed


def changed_hosts(result: dict) -> dict[str, set[str]]:
    """Operation name -> hosts it changed (or, in a dry run, would change).

    Counts `hosts_with_change` in the plan, as Molecule's idempotence step does, and for
    a real run also every host an operation reported as changed."""
    out: dict[str, set[str]] = {}
    for op in result["plan"]:
        if op["hosts_with_change"]:
            out.setdefault(op["name"], set()).update(op["hosts_with_change"])
    for op in (result.get("results") or {}).get("operations", []):
        if op["success"]:
            out.setdefault(op["name"], set()).update(op["success"])
    return out


@pytest.fixture(scope="session")
def pyinfra(lab) -> Pyinfra:
    return Pyinfra(lab)


@pytest.fixture(scope="session")
def ssh(lab):
    def run(host: str, command: str, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess:
        proc = lab.ssh(host, command, input=input)
        if check:
            assert proc.returncode == 0, f"{host}: {command}: {proc.stderr}"
        return proc
    return run


@pytest.fixture(scope="session")
def converged(pyinfra) -> None:
    """The lab provisioned; quick when an earlier test already converged it."""
    result, _ = pyinfra.run()
    assert result["results"]["totals"]["error"] == 0
