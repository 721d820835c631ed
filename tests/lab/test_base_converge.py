"""Converge bare lab hosts, re-apply without change, and repair drift — the backbone.

Tests in this module run in order and build on each other, like a user's first day.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from infra.inventory_file import group_defaults
from settings.base import CA_DIR
from testing.deploy import changed_hosts
from testing.figures import record

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def all_hosts(lab) -> set[str]:
    return {m.name for m in lab.deploy_hosts}


def group_value(group: str, key: str):
    return group_defaults(group)[key]


def test_dry_plan_on_fresh_hosts(pyinfra, all_hosts):
    """What users run in CI against their VMs: a plan, nothing changed."""
    result, elapsed = pyinfra.run("--dry")
    record("dry run against fresh hosts", f"{elapsed:.1f} s")
    assert result["results"] is None
    assert set().union(*changed_hosts(result).values()) == all_hosts


def test_first_converge(pyinfra, all_hosts):
    result, elapsed = pyinfra.run()
    record("first converge (bare hosts)", f"{elapsed:.1f} s")
    totals = result["results"]["totals"]
    assert totals["error"] == 0 and not result["results"]["failed_hosts"]
    per_host: dict[str, int] = {}
    for op in result["plan"]:
        for host in op["hosts_with_change"] + op["hosts_with_conditional_change"]:
            per_host[host] = per_host.get(host, 0) + 1
    ops = {}
    for op in result["results"]["operations"]:
        for host in op["success"] + op["no_change"]:
            ops[host] = ops.get(host, 0) + 1
    record("operations per host", ", ".join(f"{h} {n}" for h, n in sorted(ops.items())))
    assert set(ops) == all_hosts


def test_second_apply_changes_nothing(pyinfra):
    result, elapsed = pyinfra.run()
    record("re-apply with nothing to change", f"{elapsed:.1f} s")
    assert changed_hosts(result) == {}


def test_lab_up_again_leaves_provisioned_hosts_alone(lab, pyinfra):
    """`make lab` twice: the lab's second `up` must not undo what the deploy set up."""
    up = subprocess.run([sys.executable, "-m", "lab", "up", "--workers", str(len(lab.workers))],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert up.returncode == 0, up.stderr
    result, _ = pyinfra.run()
    assert changed_hosts(result) == {}


def test_hosts_have_accounts_tree_and_trust(lab, ssh):
    for host, group in [(m.name, "orchestrator" if m.role == "orchestrator" else "workers")
                        for m in lab.deploy_hosts]:
        for user in group_value(group, "system_users"):
            out = ssh(host, f"getent passwd {user}").stdout.split(":")
            assert out[6].strip() == "/usr/sbin/nologin", f"{host}: {user} can log in"
        tree = group_value(group, "data_tree")
        root = group_value("all", "data_root")
        paths = " ".join(f"{root}/{rel}".rstrip("/") for rel in tree)
        listing = ssh(host, f"stat -c '%n %U %G %a' {paths}").stdout.splitlines()
        seen = {line.split()[0]: tuple(line.split()[1:]) for line in listing}
        for rel, want in tree.items():
            assert seen[f"{root}/{rel}".rstrip("/")] == want, f"{host}: {rel}"
        config_dir = group_value(group, "config_dir")
        assert ssh(host, f"stat -c '%U %G %a' {config_dir}").stdout.split() == [
            "root", "root", "755"]
        # Each extra CA, byte for byte, in the bundle that TLS clients read.
        bundle = ssh(host, "cat /etc/ssl/certs/ca-certificates.crt").stdout
        for cert in lab.cfg.extra_ca_certs:
            body = "".join(cert.read_text().split("-----")[2].split())
            assert body in "".join(bundle.split()), f"{host}: {cert.name} not trusted"


def test_drift_is_reported_and_repaired(pyinfra, ssh):
    root = group_value("all", "data_root")
    ssh("worker2", f"chmod 777 {root}/financial && rm -rf {root}/worker-artifacts/results")

    plan, _ = pyinfra.run("--dry")
    drift = changed_hosts(plan)
    assert drift == {
        f"Base system | Data folder {root}/financial": {"worker2"},
        f"Base system | Data folder {root}/worker-artifacts/results": {"worker2"},
    }

    repaired, _ = pyinfra.run()
    assert changed_hosts(repaired) == drift
    stat = ssh("worker2", f"stat -c '%a %U' {root}/financial {root}/worker-artifacts/results")
    assert stat.stdout.split() == ["750", "autocode", "750", "autocode"]

    again, _ = pyinfra.run()
    assert changed_hosts(again) == {}


def test_removed_ca_certificate_is_restored(lab, pyinfra, ssh):
    if not lab.cfg.extra_ca_certs:
        pytest.skip("the control machine has no extra CA certificates to install")
    name = f"autocode-{lab.cfg.extra_ca_certs[0].name}"
    ssh("worker3", f"rm {CA_DIR}/{name} && "
        "update-ca-certificates --fresh >/dev/null")
    result, _ = pyinfra.run()
    changed = changed_hosts(result)
    # One operation owns the folder: it writes the file and rebuilds the trust store.
    assert changed == {"Base system | Extra CA certificates": {"worker3"}}
    ssh("worker3", f"test -L /etc/ssl/certs/{name[:-4]}.pem")
