"""Lab tests: a fresh lab per session, torn down afterwards even when tests fail.

Set AUTOCODE_LAB_KEEP=1 to leave the lab running after the session for a look around,
and AUTOCODE_LAB_REUSE=1 to run against the lab already up instead of fresh hosts (for
iterating on one test; the converge and idempotence figures then mean nothing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace

import pytest

from infra.inventory_file import group_defaults
from lab.api import Lab
from lab.config import LabConfig, default_extra_ca_certs
from testing.deploy import Pyinfra
from testing.figures import FIGURES, record


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


@pytest.fixture(scope="session")
def pyinfra(lab) -> Pyinfra:
    return Pyinfra(lab.inventory_file)


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
