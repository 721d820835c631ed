"""The task service deployed: autocode-control on the orchestrator, used from the control
machine with the real `autocode task` CLI and the files the deploy wrote beside the
inventory (endpoint, platform CA copy, 0600 token), git over the deploy's SSH access; a
task run through it by each of the lab's claiming workers (`task_source: orchestrator`:
worker3 with Qwen Code, worker1 with Claude Code) with its real agent CLI under an account
of its own, fetched back as a branch, its
metered cost from the proxy's ledger rows carrying its id; and refused to whoever is not
an operator, or a worker's certificate used from another worker. The other lab workers
keep their inboxes for now (lab/inventory_file.py)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from decimal import Decimal

import pytest

from infra.inventory_file import group_defaults
from lab.inventory_file import CLAIMING_WORKERS, LAB_AGENTS, LAB_AGENTS_BY_SUITE
from settings.control import CONFIG, CONTROL_USER, UNIT
from settings.metering import LEDGER
from settings.worker import AGENT_USER, CONTROL_KEY
from settings.worker import UNIT as WORKER_UNIT
from testing.deploy import changed_hosts
from testing.figures import record

pytestmark = pytest.mark.lab
ORCH = group_defaults("orchestrator")
REPOS = f"{ORCH['data_root']}/control/repos"
WORKERS = group_defaults("workers")
CLAIMING = f"worker{CLAIMING_WORKERS[0]}"
RUN = uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def endpoint(lab, converged):
    return lab.inventory_file.with_name("autocode-control.json")


def task(endpoint, *args: str, check_code: int | None = 0,
         timeout: float = 120) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "autocode.control.cli", "--control",
                          str(endpoint), "task", *args], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, "NO_PROXY": "*"})
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


@pytest.mark.parametrize("worker", [f"worker{n}" for n in CLAIMING_WORKERS])
def test_a_task_through_the_front_door_runs_the_real_cli_and_comes_back_as_a_branch(
        lab, ssh, endpoint, repo, worker):
    """The story: submit, follow its log to the end, show, fetch; the branch holds the file
    the agent made; the task's metered cost is, to the micro-dollar, the sum of the
    proxy's ledger rows carrying its id; the agent ran as its own account, without the
    worker's capabilities."""
    kind = LAB_AGENTS_BY_SUITE.get(lab.cfg.suite, LAB_AGENTS)[int(worker[-1]) - 1]
    content = f"written by {kind} through the front door for {RUN}"
    began = time.monotonic()
    # Qwen Code sends no max_tokens: the proxy reserves its model's output limit, 2.84 USD
    # for its first call here; a budget under that is refused_budget at once.
    submitted = task_json(endpoint, "submit", "--repo", str(repo), "--worker", worker,
                          "--budget", "10", "--prompt",
                          f"Create the file hello.txt containing exactly: {content}")
    task_id = submitted["id"]
    follow = task(endpoint, "logs", task_id, "--follow", check_code=None, timeout=600)
    shown = task_json(endpoint, "show", task_id)
    elapsed = time.monotonic() - began
    journal = ssh(worker, f"journalctl -u {WORKER_UNIT} -n 30 --no-pager -o cat",
                  check=False).stdout
    assert shown["status"] == "succeeded" and follow.returncode == 0, \
        (shown, follow.stderr[-2000:], journal)
    assert shown["worker"] == worker
    task(endpoint, "fetch", task_id, "--repo", str(repo))
    made = subprocess.run(["git", "-C", str(repo), "show", f"autocode/{task_id}:hello.txt"],
                          capture_output=True, text=True)
    assert made.returncode == 0 and made.stdout == content + "\n", made.stderr
    # The metered cost: exactly the proxy's ledger rows with this task's id.
    orch = lab.cfg.orchestrator.name
    code = ("import json, sys; from autocode.budget import BudgetLedger; "
            f"rows = BudgetLedger({ORCH['data_root'] + '/' + LEDGER!r}, read_only=True)"
            ".charges_of_task(sys.argv[1]); print(json.dumps([r['amount_usd'] for r in rows],"
            " default=str))")
    venv = f"{ORCH['install_dir']}/venv"
    rows = json.loads(ssh(orch, f"{venv}/bin/python -c {shlex.quote(code)} {task_id}").stdout)
    assert rows, "no metered call carried the task's id"
    assert Decimal(shown["metered"]["cost_usd"]) == sum(Decimal(r) for r in rows)
    assert shown["metered"]["calls"] == len(rows)
    record(f"{kind} task through the front door ({worker})",
           f"{elapsed:.1f} s submit to fetched, {len(rows)} metered calls, "
           f"{shown['metered']['cost_usd']} USD")


def test_the_agents_account_cannot_use_the_workers_credential(ssh, endpoint, lab):
    """Outside any task too: autocode-agent is in no group of the worker's, cannot read the
    worker's client key or config, and without the key the workers' API takes nothing."""
    assert ssh(CLAIMING, f"id -nG {AGENT_USER}").stdout.split() == [AGENT_USER]
    key = ssh(CLAIMING, f"stat -c '%U:%G %a' {CONTROL_KEY}").stdout.split()
    assert key == [f"{WORKERS['service_user']}:{WORKERS['service_user']}", "640"]
    for path in (CONTROL_KEY, f"{WORKERS['config_dir']}/worker.yaml"):
        read = ssh(CLAIMING, f"runuser -u {AGENT_USER} -- cat {path}", check=False)
        assert read.returncode != 0 and "Permission denied" in read.stderr, path
    port = ORCH["control_worker_port"]
    claim = ssh(CLAIMING, f"runuser -u {AGENT_USER} -- curl -sS -m 10 -X POST "
                f"https://{lab.cfg.orchestrator.worker_addr}:{port}/v1/worker/claim",
                check=False)
    assert claim.returncode not in (0, 7, 28), (claim.returncode, claim.stderr)


def wait_for(endpoint, task_id: str, states: tuple[str, ...], within: float) -> dict:
    deadline = time.monotonic() + within
    while True:
        shown = task_json(endpoint, "show", task_id)
        if shown["status"] in states or time.monotonic() > deadline:
            return shown
        time.sleep(1)


def test_cancel_kills_the_agent_under_its_own_account(lab, ssh, endpoint, repo):
    """The agent waits on the model (the fixture holds its answer): it runs as
    autocode-agent with no capability at all (the worker holds five); a cancel reaches it:
    its process group is killed by the worker, which is another account (CAP_KILL), and
    the task ends cancelled before its lease could run out."""
    submitted = task_json(endpoint, "submit", "--repo", str(repo), "--worker", CLAIMING,
                          "--budget", "10", "--prompt",
                          "Wait 300 seconds first. Create the file x.txt containing exactly: x")
    task_id = submitted["id"]
    assert wait_for(endpoint, task_id, ("running",), 120)["status"] == "running"
    deadline = time.monotonic() + 60
    while ssh(CLAIMING, f"pgrep -u {AGENT_USER}", check=False).returncode != 0:
        assert time.monotonic() < deadline, "the agent never started"
        time.sleep(1)
    caps = ssh(CLAIMING, f"for pid in $(pgrep -u {AGENT_USER}); do grep -E "
               "'^Cap(Prm|Eff|Amb):' /proc/$pid/status; done").stdout.split()
    assert caps and set(caps[1::2]) == {"0" * 16}, caps
    worker_caps = ssh(CLAIMING, f"grep CapAmb /proc/$(systemctl show -P MainPID "
                      f"{WORKER_UNIT})/status").stdout.split()[1]
    assert int(worker_caps, 16) != 0  # the worker's, kept from its agent
    asked = time.monotonic()
    assert task_json(endpoint, "cancel", task_id)["cancel_requested"] is True
    ended = wait_for(endpoint, task_id, ("cancelled", "interrupted", "failed", "succeeded"),
                     120)
    took = time.monotonic() - asked
    assert ended["status"] == "cancelled" and ended["reason"] == "cancelled by an operator", \
        ended
    assert ssh(CLAIMING, f"pgrep -u {AGENT_USER}", check=False).returncode == 1
    record("cancel to cancelled, agent under its own account", f"{took:.1f} s")


def test_a_workers_certificate_is_worth_nothing_from_another_worker(ssh, lab):
    """worker3's client certificate and key, copied by root to worker4: from worker4's
    address the workers' API refuses them (the name must be the address's worker); from
    worker3 the same request is taken as worker3's (and refused only for the task, which
    is not worker3's)."""
    port, orch = ORCH["control_worker_port"], lab.cfg.orchestrator.worker_addr
    pair = {name: ssh(CLAIMING, f"cat /etc/autocode/control-client/worker.{name}").stdout
            for name in ("crt", "key")}
    thief = "worker4"
    ssh(thief, "install -d -m 700 /root/stolen")
    for name, text in pair.items():
        ssh(thief, f"cat > /root/stolen/worker.{name}", input=text)
    def request(folder: str) -> str:
        return (f"curl -sS -m 10 -X POST "
                f"--cacert /etc/ssl/certs/autocode-platform-ca.pem --cert {folder}/worker.crt "
                f"--key {folder}/worker.key "
                f"https://{orch}:{port}/v1/worker/tasks/t-000000-0000000000/heartbeat")
    try:
        stolen = ssh(thief, request("/root/stolen"), check=False).stdout
        own = ssh(CLAIMING, request("/etc/autocode/control-client")).stdout
    finally:
        ssh(thief, "rm -rf /root/stolen")
    assert json.loads(stolen)["error"] == \
        f"certificate '{CLAIMING}' from {lab.cfg.worker(4).worker_addr} is not that " \
        "address's worker", stolen
    assert json.loads(own)["error"] == \
        f"task 't-000000-0000000000' is not held by {CLAIMING}", own


def test_a_task_over_its_budget_is_refused_at_the_proxy_and_costs_nothing(ssh, endpoint,
                                                                          repo):
    """A budget far under the worst case of one call: the proxy refuses the call before
    it goes upstream (the provider's error shape), the service ends the task
    refused_budget, nothing is metered for it; the worker goes on (the batch below)."""
    submitted = task_json(endpoint, "submit", "--repo", str(repo), "--worker", CLAIMING,
                          "--budget", "0.01", "--prompt",
                          "Create the file b.txt containing exactly: b")
    ended = wait_for(endpoint, submitted["id"], ("succeeded", "failed", "cancelled",
                                                 "interrupted", "refused_budget"), 180)
    assert ended["status"] == "refused_budget", ended
    assert ended["metered"]["cost_usd"] == "0" and ended["metered"]["calls"] == 0
    # The refusals, in the task's record of hosts (the proxy writes its summary every few
    # seconds).
    deadline = time.monotonic() + 30
    while True:
        hosts = task_json(endpoint, "show", submitted["id"])["hosts"]
        refused = {host: entry for host, entry in hosts.items() if entry["refused"]}
        if refused or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert refused, hosts
    reasons = " ".join(" ".join(e["reasons"]) for e in refused.values())
    assert "budget" in reasons, refused


def claimed_lines(ssh, worker: str, task_id: str) -> int:
    journal = ssh(worker, f"journalctl -u {WORKER_UNIT} --no-pager -o cat").stdout
    return journal.count(f"claimed task {task_id} ")


def test_a_batch_runs_each_task_once_in_order_one_at_a_time_per_worker(ssh, endpoint, lab,
                                                                       repo):
    """Three tasks for each claiming worker's agent, submitted at once: each claimed and
    run exactly once, by a worker of its agent type, in the order submitted, never two at
    once on one worker."""
    agents = LAB_AGENTS_BY_SUITE.get(lab.cfg.suite, LAB_AGENTS)
    kinds = {agents[n - 1]: f"worker{n}" for n in CLAIMING_WORKERS}
    submitted = []
    for i in range(3):
        for kind in kinds:
            record_ = task_json(endpoint, "submit", "--repo", str(repo), "--agent", kind,
                                "--budget", "10", "--prompt",
                                f"Create the file n{i}.txt containing exactly: {i}")
            submitted.append(record_)
    began = time.monotonic()
    ended = {}
    while len(ended) < len(submitted) and time.monotonic() - began < 600:
        for item in task_json(endpoint, "list"):
            if item["id"] in {s["id"] for s in submitted} and item["status"] not in (
                    "queued", "claimed", "running"):
                ended[item["id"]] = task_json(endpoint, "show", item["id"])
        time.sleep(2)
    assert len(ended) == len(submitted), f"{len(ended)} of {len(submitted)} ended"
    took = time.monotonic() - began
    for kind, worker in kinds.items():
        mine = [ended[s["id"]] for s in submitted if s["agent_type"] == kind]
        assert [t["status"] for t in mine] == ["succeeded"] * 3, mine
        # Kinds pinned to none: only the claiming worker of that type takes them (the
        # inbox worker of the same type never claims).
        assert {t["worker"] for t in mine} == {worker}
        assert [t["started_at"] for t in mine] == sorted(t["started_at"] for t in mine)
        for earlier, later in zip(mine, mine[1:], strict=False):
            assert earlier["ended_at"] <= later["claimed_at"], (earlier, later)
        assert [claimed_lines(ssh, worker, t["id"]) for t in mine] == [1, 1, 1]
    record("batch of 6 through the front door (2 claiming workers)", f"{took:.1f} s")


def test_kill_9_of_the_service_mid_task_loses_nothing(ssh, endpoint, lab, repo):
    """autocode-control killed with SIGKILL while a task runs (the agent waits on the
    model): systemd starts it again, the worker's heartbeats and report wait for it, and the
    task ends succeeded, claimed once."""
    orch = lab.cfg.orchestrator.name
    submitted = task_json(endpoint, "submit", "--repo", str(repo), "--worker", CLAIMING,
                          "--budget", "10", "--prompt",
                          "Wait 20 seconds first. Create the file k.txt containing exactly: k")
    task_id = submitted["id"]
    assert wait_for(endpoint, task_id, ("running",), 120)["status"] == "running"
    before = ssh(orch, f"systemctl show -P MainPID {UNIT}").stdout.strip()
    ssh(orch, f"systemctl kill -s KILL {UNIT}")
    deadline = time.monotonic() + 60
    while True:
        now = ssh(orch, f"systemctl show -P MainPID {UNIT}").stdout.strip()
        active = ssh(orch, f"systemctl is-active {UNIT}", check=False).stdout.strip()
        if now not in ("0", before) and active == "active":
            break
        assert time.monotonic() < deadline, "autocode-control did not come back"
        time.sleep(1)
    # The service's port answers again before the task can be shown.
    shown = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        run = task(endpoint, "show", task_id, "--json", check_code=None)
        if run.returncode == 0 and json.loads(run.stdout)["status"] not in (
                "claimed", "running"):
            shown = json.loads(run.stdout)
            break
        time.sleep(2)
    assert shown is not None and shown["status"] == "succeeded", shown
    assert claimed_lines(ssh, CLAIMING, task_id) == 1
