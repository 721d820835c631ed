"""The task service deployed: autocode-control on the orchestrator, used from the control
machine with the real `autocode task` CLI and the files the deploy wrote beside the
inventory (endpoint, platform CA copy, 0600 token), git over the deploy's SSH access; and
refused to whoever is not an operator.

The workers do not claim from it yet (they still read their inboxes: test_workers.py), so
the tasks here stay queued until cancelled; the worker side runs as real processes in
tests/unit/control/."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from infra.inventory_file import group_defaults
from settings.control import CONFIG, CONTROL_USER, UNIT
from testing.deploy import changed_hosts

pytestmark = pytest.mark.lab
ORCH = group_defaults("orchestrator")
REPOS = f"{ORCH['data_root']}/control/repos"


@pytest.fixture(scope="module")
def endpoint(lab, converged):
    return lab.inventory_file.with_name("autocode-control.json")


def task(endpoint, *args: str, check_code: int | None = 0) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "autocode.control.cli", "--control",
                          str(endpoint), "task", *args], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "NO_PROXY": "*"})
    if check_code is not None:
        assert run.returncode == check_code, (args, run.returncode, run.stderr)
    return run


def task_json(endpoint, *args: str):
    return json.loads(task(endpoint, *args, "--json").stdout)


@pytest.fixture
def repo(tmp_path):
    src = tmp_path / "app"
    src.mkdir()
    git = ["git", "-C", str(src), "-c", "user.name=op", "-c", "user.email=op@example.com"]
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    (src / "README.md").write_text("app\n")
    subprocess.run([*git, "add", "README.md"], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    return src


def test_the_service_runs_as_its_own_account_with_its_files_private(ssh, endpoint, lab):
    orch = lab.cfg.orchestrator.name
    assert ssh(orch, f"systemctl is-active {UNIT}").stdout.strip() == "active"
    user = ssh(orch, f"systemctl show -P User {UNIT}").stdout.strip()
    assert user == CONTROL_USER
    assert ssh(orch, f"stat -c '%U:%G %a' {CONFIG}").stdout.split() == [
        f"root:{CONTROL_USER}", "640"]
    key = ssh(orch, "stat -c '%U %a' /etc/autocode/control/control.key").stdout.split()
    assert key == [CONTROL_USER, "640"]
    token_file = lab.inventory_file.with_name(f"{lab.inventory_file.stem}.control-token.json")
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    token = json.loads(token_file.read_text())["operator_token"]
    # The host holds the token's hash, never the token.
    found = ssh(orch, f"grep -rlF -- {token!r} /etc /var/lib/autocode 2>/dev/null",
                check=False)
    assert found.stdout.strip() == "", found.stdout


def test_submit_pushes_the_repository_over_ssh_and_the_task_is_queued(ssh, endpoint, lab,
                                                                      repo):
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    record = task_json(endpoint, "submit", "--repo", str(repo), "--prompt",
                       "Add a test", "--agent", "aider", "--budget", "1.5")
    assert record["status"] == "queued" and record["id"]
    assert record["spec"]["base_commit"] == head and record["spec"]["budget_usd"] == "1.5"
    orch = lab.cfg.orchestrator.name
    # In the orchestrator's bare repository, owned by the service's account.
    bare = f"{REPOS}/{record['spec']['repo']}.git"
    assert ssh(orch, f"runuser -u {CONTROL_USER} -- git -C {bare} cat-file -t {head}"
               ).stdout.strip() == "commit"
    assert ssh(orch, f"stat -c %U {bare}/objects").stdout.strip() == CONTROL_USER
    listed = {r["id"]: r for r in task_json(endpoint, "list")}
    assert listed[record["id"]]["status"] == "queued"
    shown = task_json(endpoint, "show", record["id"])
    assert shown["spec"]["prompt"] == "Add a test"
    cancelled = task_json(endpoint, "cancel", record["id"])
    assert cancelled["status"] == "cancelled"
    again = task_json(endpoint, "retry", record["id"])
    assert again["status"] == "queued" and again["id"] != record["id"]
    assert task_json(endpoint, "cancel", again["id"])["status"] == "cancelled"
    ended = task(endpoint, "cancel", record["id"], check_code=6)
    assert "cancelled" in ended.stderr


def test_bad_input_queues_nothing(endpoint, repo, tmp_path):
    before = len(task_json(endpoint, "list"))
    for args, code, text in (
            (["--repo", str(repo), "--agent", "no-such-agent"], 2, "no-such-agent"),
            (["--repo", str(repo), "--worker", "worker9"], 2, "worker9"),
            (["--repo", str(repo), "--agent", "aider", "--budget", "-1"], 2, "budget"),
            (["--repo", str(repo), "--agent", "aider", "--budget", "1000"], 2, "daily"),
            (["--repo", str(tmp_path / "nowhere"), "--agent", "aider"], 2, "no such folder")):
        run = task(endpoint, "submit", "--prompt", "p", *args, check_code=None)
        assert run.returncode == code and text in run.stderr, (args, run.stderr)
    assert len(task_json(endpoint, "list")) == before
    missing = task(endpoint, "show", "t-000000-0000000000", check_code=5)
    assert "no task" in missing.stderr


def test_only_operators_reach_the_operators_api(ssh, endpoint, lab, tmp_path):
    doc = json.loads(endpoint.read_text())
    wrong = tmp_path / "wrong-token.json"
    wrong.write_text(json.dumps({"operator_token": "not-the-token"}))
    wrong.chmod(0o600)
    ca = endpoint.with_name(doc["ca_cert"])
    other = tmp_path / "autocode-control.json"
    other.write_text(json.dumps({**doc, "token_file": str(wrong), "ca_cert": str(ca)}))
    refused = task(other, "list", check_code=4)
    assert "token" in refused.stderr
    orch = lab.cfg.orchestrator
    control = group_defaults("orchestrator")
    # From a worker: the operators' port is dropped by the orchestrator's firewall...
    operator_port = control["control_operator_port"]
    blocked = ssh("worker1", f"curl -sS -m 5 -k https://{orch.worker_addr}:{operator_port}/",
                  check=False)
    assert blocked.returncode in (7, 28), blocked.stderr
    # ...and the workers' port takes no client without a platform certificate.
    worker_port = control["control_worker_port"]
    no_cert = ssh("worker1", f"curl -sS -m 5 --cacert /etc/ssl/certs/autocode-platform-ca.pem "
                  f"https://{orch.worker_addr}:{worker_port}/v1/worker/claim -X POST",
                  check=False)
    assert no_cert.returncode not in (0, 7, 28), (no_cert.returncode, no_cert.stderr)


def test_tampering_is_reported_and_repaired_and_the_token_kept(pyinfra, ssh, endpoint, lab):
    """The token's hash overwritten on the host and the endpoint file deleted beside the
    inventory: the dry run names exactly those, the apply repairs them (the service
    restarted for its new hash), the token stays the same, and `autocode task` works."""
    orch = lab.cfg.orchestrator.name
    token_file = lab.inventory_file.with_name(f"{lab.inventory_file.stem}.control-token.json")
    token = token_file.read_text()
    ssh(orch, "echo 0000 > /etc/autocode/control/operator-token.sha256")
    endpoint.unlink()
    plan, _ = pyinfra.run("--dry")
    drift = changed_hosts(plan)
    assert drift == {"Task service | Operator token's SHA-256": {orch},
                     "Task service | autocode-control.json beside the inventory": {orch},
                     f"Task service | Unit {UNIT}": {orch}}, drift
    repaired, _ = pyinfra.run()
    assert changed_hosts(repaired) == drift
    assert token_file.read_text() == token
    assert isinstance(task_json(endpoint, "list"), list)
    again, _ = pyinfra.run()
    assert changed_hosts(again) == {}
