"""Workers doing their job on real hosts: autocode-worker.service running each worker's
real agent CLI against the lab's LLM API fixture (lab/fixtures/llm_api.py) on the
internet host, through the orchestrator's proxy; kills, budgets and bad config."""

from __future__ import annotations

import json
import shlex
import time
import uuid
from datetime import datetime

import pytest
import yaml

from infra.inventory_file import group_defaults
from lab.inventory_file import LAB_AGENTS, model_endpoint
from settings.agent_clis import AgentClis
from settings.mitmproxy import AGENT_ENV, Mitmproxy
from settings.worker import UNIT
from testing.deploy import DeployFailed, Pyinfra, changed_hosts
from testing.figures import record
from testing.traffic import remote_spool_records

pytestmark = pytest.mark.lab
WORKERS = group_defaults("workers")
AGENT = WORKERS["service_user"]
DATA_ROOT = WORKERS["data_root"]
VENV = f"{WORKERS['install_dir']}/venv"
CONFIG = f"{WORKERS['config_dir']}/worker.yaml"
SPOOL = Mitmproxy.spool_dir(group_defaults("orchestrator")["data_root"])
AGENT_OF = {f"worker{n}": kind for n, kind in enumerate(LAB_AGENTS, 1)}
RUN = uuid.uuid4().hex[:8]
LAB_DATA = {**WORKERS, "node_source": "npm-registry"}
LAB_CLIS = AgentClis.from_data(LAB_DATA)
NPM_PREFIX = LAB_CLIS.npm_prefix(WORKERS["install_dir"])
NODE_BIN = LAB_CLIS.node_bin_dir(WORKERS["install_dir"])
# What each CLI answers to --version, for its pin.
VERSION_LINE = {"claude-code": "{} (Claude Code)", "qwen-coder": "{}", "aider": "aider {}"}


def as_agent(command: str) -> str:
    """A command as the agent account, with the service's environment."""
    path = (f"{NPM_PREFIX}/bin:{NODE_BIN}:"
            "/usr/local/bin:/usr/bin:/bin")
    return (f"set -a; . {AGENT_ENV}; set +a; cd /; runuser -u {AGENT} -- env PATH={path} "
            f"HOME={WORKERS['service_home']} sh -c {shlex.quote(command)}")


def worker_cli(ssh, host: str, args: str, check: bool = True):
    return ssh(host, as_agent(f"{VENV}/bin/autocode-worker {args} --config {CONFIG}"),
               check=check)


def artifacts(host: str) -> str:
    return f"{DATA_ROOT}/worker-artifacts/{host}"


def submit(ssh, host: str, task: dict) -> None:
    # Written beside the inbox's *.json and renamed in: never read half-written.
    inbox = f"{artifacts(host)}/inbox"
    ssh(host, f"cat > {inbox}/.{task['id']}.part && mv {inbox}/.{task['id']}.part "
        f"{inbox}/{task['id']}.json", input=json.dumps(task))


def wait_for_result(ssh, host: str, task_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    path = f"{artifacts(host)}/results/{task_id}.json"
    while time.monotonic() < deadline:
        proc = ssh(host, f"cat {path} 2>/dev/null", check=False)
        if proc.returncode == 0 and proc.stdout.strip():
            return json.loads(proc.stdout)
        time.sleep(1)
    journal = ssh(host, f"journalctl -u {UNIT} -n 40 --no-pager -o cat", check=False).stdout
    raise AssertionError(f"{host}: no result for {task_id} after {timeout}s; journal:\n{journal}")


def ledger_charges(ssh, host: str) -> list[dict]:
    code = ("import json; from autocode.budget import BudgetLedger; "
            f"print(json.dumps(BudgetLedger.for_data_root({DATA_ROOT!r}).charges(), "
            "default=str))")
    return json.loads(ssh(host, as_agent(f"{VENV}/bin/python -c {shlex.quote(code)}")).stdout)


def model_calls(lab, ssh, host: str, since: float, want: int, timeout: float = 15
                ) -> list[dict]:
    """The proxy's records of calls from `host` to the LLM fixture since `since`."""
    endpoint = model_endpoint(lab.cfg)

    def match(r: dict) -> bool:
        at = datetime.fromisoformat(r["@timestamp"].replace("Z", "+00:00")).timestamp()
        return r.get("worker_id") == host and r.get("url", "").startswith(endpoint) and \
            at >= int(since)
    return remote_spool_records(ssh, SPOOL, match, want=want, timeout=timeout)


def lab_doc(lab) -> dict:
    """The lab's inventory, to change and write elsewhere; its keys files stay the lab's."""
    doc = yaml.safe_load(lab.inventory_file.read_text())
    doc["data"]["vault_keys_file"] = str(lab.inventory_file.with_name(
        f"{lab.inventory_file.stem}.vault-keys.json"))
    return doc


def main_pid(ssh, host: str) -> int:
    return int(ssh(host, f"systemctl show -P MainPID {UNIT}").stdout.strip() or 0)


def test_every_worker_runs_its_agent_with_the_pinned_cli(ssh, converged):
    pins = WORKERS["agent_cli_versions"]
    for host, kind in AGENT_OF.items():
        assert ssh(host, f"systemctl is-active {UNIT}").stdout.strip() == "active", host
        budget = json.loads(worker_cli(ssh, host, "budget --json").stdout)
        assert (budget["worker_id"], budget["agent_type"]) == (host, kind)
        assert budget["daily_budget_usd"] == "25" and budget["allowed"] is True
        binary = LAB_CLIS.binary(kind, LAB_DATA["install_dir"], LAB_DATA["service_home"])
        version = ssh(host, as_agent(f"{binary} --version")).stdout.strip().splitlines()[-1]
        assert version == VERSION_LINE[kind].format(pins[kind]), (host, version)
        # Read-only to the agent: it cannot update itself away from its pin.
        assert ssh(host, as_agent(f"test -w {binary}"), check=False).returncode != 0
    record("agent CLIs at their pins", ", ".join(f"{k} {pins[k]}" for k in
                                                  sorted(set(AGENT_OF.values()))))


# Claude Code and Qwen Code run through the front door on worker1 and worker3
# (test_control.py); Aider's worker keeps its inbox.
@pytest.mark.parametrize("host", ["worker2"])
def test_a_task_runs_the_real_cli_which_edits_the_tree_through_the_proxy(lab, ssh, converged,
                                                                        host):
    kind = AGENT_OF[host]
    task_id = f"{kind}-{RUN}"
    content = f"written by {kind} for {RUN}"
    since = time.time()
    submit(ssh, host, {"id": task_id,
                       "prompt": f"Create the file hello.txt containing exactly: {content}"})
    result = wait_for_result(ssh, host, task_id)
    elapsed = time.time() - since
    assert result["result"]["status"] == "succeeded", result
    workdir = f"{artifacts(host)}/projects/{task_id}"
    assert ssh(host, f"cat {workdir}/hello.txt").stdout == content + "\n"
    charges = [c for c in ledger_charges(ssh, host) if c["task_id"] == task_id]
    if kind == "qwen-coder":
        # Qwen Code reports tokens, not cost: its spend reaches the ledger only by metering.
        assert charges == [] and result["result"]["input_tokens"] > 0, result
    else:
        assert len(charges) == 1 and charges[0]["worker_id"] == host, charges
    # Every model call left the worker through the proxy, attributed to it.
    calls = model_calls(lab, ssh, host, since, want=1)
    assert calls, f"no model API call from {host} in the proxy's spool"
    charged = charges[0]["amount_usd"] if charges else "no"
    record(f"{kind} task on {host}", f"{elapsed:.1f} s, {len(calls)} proxied calls, "
           f"{charged} USD charged")


def test_kill_9_of_the_worker_mid_task_restarts_it_and_reports_the_task_interrupted(
        ssh, converged):
    host = "worker4"
    task_id = f"slow-{RUN}"
    submit(ssh, host, {"id": task_id, "prompt": "Wait 120 seconds first. Create the file "
                       "slow.txt containing exactly: never"})
    claimed = f"{artifacts(host)}/inbox/.claimed/{task_id}.json"
    deadline = time.monotonic() + 60
    while ssh(host, f"test -e {claimed}", check=False).returncode != 0:
        assert time.monotonic() < deadline, "the task was never claimed"
        time.sleep(0.5)
    time.sleep(2)  # the agent CLI is waiting on its model call
    before = main_pid(ssh, host)
    ssh(host, f"kill -9 {before}")
    killed = time.monotonic()
    while main_pid(ssh, host) in (0, before):
        assert time.monotonic() - killed < 30, "systemd did not restart the worker"
        time.sleep(0.2)
    restarted = time.monotonic() - killed
    result = wait_for_result(ssh, host, task_id, timeout=30)
    assert result["result"]["status"] == "interrupted", result
    assert "not re-run" in result["result"]["error"]
    # The agent CLI died with the worker: nothing of the task still runs.
    assert ssh(host, "pgrep -u autocode -f 'claude|qwen|aider'", check=False).stdout == ""
    assert ssh(host, f"test -e {artifacts(host)}/projects/{task_id}/slow.txt",
               check=False).returncode != 0
    record("worker kill -9 -> restarted by systemd", f"{restarted:.1f} s")


def test_a_spent_budget_refuses_the_next_task_before_any_model_call(lab, ssh, converged):
    host = "worker4"
    code = ("from decimal import Decimal; from autocode.budget import BudgetLedger; "
            f"BudgetLedger.for_data_root({DATA_ROOT!r}).charge(idempotency_key="
            f"'lab-spend-{RUN}', worker_id={host!r}, agent='claude-code', task_id='spend', "
            "amount_usd=Decimal('25'), source='agent-reported')")
    ssh(host, as_agent(f"{VENV}/bin/python -c {shlex.quote(code)}"))
    assert json.loads(worker_cli(ssh, host, "budget --json").stdout)["allowed"] is False
    since = time.time()
    task_id = f"over-{RUN}"
    submit(ssh, host, {"id": task_id, "prompt": "Create the file x.txt containing exactly: x"})
    poll = WORKERS["agent_limits"]["poll_interval_s"]
    time.sleep(3 * poll)
    # Still waiting in the inbox, unclaimed; nothing left the worker for it.
    assert ssh(host, f"test -e {artifacts(host)}/inbox/{task_id}.json",
               check=False).returncode == 0
    journal = ssh(host, f"journalctl -u {UNIT} --since @{int(since)} -o cat --no-pager").stdout
    assert "daily budget spent" in journal
    assert model_calls(lab, ssh, host, since, want=1, timeout=2) == []
    out = worker_cli(ssh, host, f"run --task-file {artifacts(host)}/inbox/{task_id}.json",
                     check=False)
    assert out.returncode == 3 and json.loads(out.stdout)["status"] == "refused_budget"


def test_a_broken_worker_value_fails_the_deploy_by_name_and_the_service_keeps_running(
        lab, ssh, converged, tmp_path):
    host = "worker3"
    before = main_pid(ssh, host)
    good = ssh(host, f"cat {CONFIG}").stdout
    doc = lab_doc(lab)
    doc["workers"][2].setdefault("data", {})["agent_limits"] = {
        **WORKERS["agent_limits"], "task_timeout_s": -5}
    inventory = tmp_path / "bad.yaml"
    inventory.write_text(yaml.safe_dump(doc))
    with pytest.raises(DeployFailed) as caught:
        Pyinfra(inventory).run()
    assert "agent_limits.task_timeout_s: -5 is not valid" in str(caught.value)
    # A value only the host can judge: a key file that is not there.
    doc["workers"][2]["data"] = {"model_api_key_file": "/etc/autocode/no-such-key"}
    inventory.write_text(yaml.safe_dump(doc))
    with pytest.raises(DeployFailed) as caught:
        Pyinfra(inventory).run("--limit", host)
    assert "model_api_key_file: /etc/autocode/no-such-key does not exist" in str(caught.value)
    assert ssh(host, f"cat {CONFIG}").stdout == good
    assert "no-such-key" in ssh(host, f"cat {CONFIG}.refused").stdout
    assert main_pid(ssh, host) == before
    assert ssh(host, f"systemctl is-active {UNIT}").stdout.strip() == "active"


def test_cursor_cli_whose_vendor_is_unreachable_fails_the_deploy_saying_so(lab, ssh,
                                                                          converged, tmp_path):
    host = "worker4"
    before = main_pid(ssh, host)
    doc = lab_doc(lab)
    doc["workers"][3]["agent_type"] = "cursor-cli"
    inventory = tmp_path / "cursor.yaml"
    inventory.write_text(yaml.safe_dump(doc))
    with pytest.raises(DeployFailed) as caught:
        Pyinfra(inventory).run("--limit", host)
    assert "Cursor CLI: " in str(caught.value), str(caught.value)[-2000:]
    # Stopped before its config: the service runs on as it was.
    assert main_pid(ssh, host) == before
    assert "agent_type: claude-code" in ssh(host, f"cat {CONFIG}").stdout


def test_reapply_after_all_this_changes_nothing(ssh, pyinfra, converged):
    again, seconds = pyinfra.run()
    assert changed_hosts(again) == {}, changed_hosts(again)
    record("re-apply after the agent tests", f"{seconds:.1f} s")


def test_nomad_runner_is_planned_not_installed(lab, ssh, converged):
    """worker_runner: nomad is the production default; Nomad's binaries are not reachable
    here, so it is exercised by a dry plan against the lab's hosts only (and the job and
    ACL logic against a Nomad API double in tests/unit/test_nomad.py)."""
    keys = lab.inventory_file.with_name(f"{lab.inventory_file.stem}.nomad-keys.json")
    plan, _ = Pyinfra(lab.inventory_file).run("--dry", "--data", "worker_runner=nomad")
    changes = changed_hosts(plan)
    workers = {f"worker{n}" for n in range(1, len(LAB_AGENTS) + 1)}
    for op in ("Nomad 1.9.7", "Nomad configuration", "Unit nomad.service",
               "Nomad ACLs bootstrapped", "Nomad job autocode-worker"):
        assert changes.get(f"Nomad server | {op}") == {"orchestrator"}, op
    assert changes["Nomad client | Nomad configuration"] == workers
    # The job replaces the unit: it is stopped then, never two readers of one inbox.
    assert changes[f"Worker agent | {UNIT} (Nomad runs the agent)"] == workers
    assert not keys.exists(), "a dry plan wrote the Nomad keys file"
    for host in ("orchestrator", "worker1"):
        assert ssh(host, "test -e /etc/apt/sources.list.d/hashicorp.sources",
                   check=False).returncode != 0, f"a dry plan wrote to {host}"
    assert ssh("worker1", f"systemctl is-active {UNIT}").stdout.strip() == "active"


def test_nodesource_is_planned_where_node_is_needed(lab, ssh, converged):
    """node_source: nodesource is the production default; NodeSource's repository is not
    reachable here, so it is exercised by a dry plan only."""
    plan, _ = Pyinfra(lab.inventory_file).run("--dry", "--data", "node_source=nodesource")
    changes = changed_hosts(plan)
    node_workers = {host for host, kind in AGENT_OF.items() if kind != "aider"}
    for op in ("NodeSource's signing key", "NodeSource's apt repository",
               f"Node {WORKERS['node_version']} (NodeSource)"):
        assert changes.get(f"Agent CLIs | {op}") == node_workers, op
    assert ssh("worker1", "test -e /etc/apt/sources.list.d/nodesource.sources",
               check=False).returncode != 0, "a dry plan wrote to worker1"


def test_the_daily_cleanup_removes_exactly_old_finished_work_trees(ssh, converged):
    host = "worker2"
    base = artifacts(host)
    old = int(time.time()) - (WORKERS["task_cleanup_days"] + 1) * 86400
    plant = []
    for task_id in (f"old-{RUN}", f"fresh-{RUN}", f"old-claimed-{RUN}"):
        plant.append(f"mkdir -p {base}/projects/{task_id}/src {base}/runs/{task_id} && "
                     f"touch {base}/projects/{task_id}/src/a.c && "
                     f"echo '{{}}' > {base}/results/{task_id}.json")
    plant.append(f"touch -d @{old} {base}/results/old-{RUN}.json "
                 f"{base}/results/old-claimed-{RUN}.json")
    plant.append(f"echo '{{\"prompt\": \"x\"}}' > {base}/inbox/.claimed/old-claimed-{RUN}.json")
    ssh(host, " && ".join(plant) + f" && chown -R {AGENT}: {base}")
    ssh(host, "systemctl start autocode-worker-cleanup.service")
    gone = {t: ssh(host, f"test -e {base}/projects/{t}", check=False).returncode != 0
            for t in (f"old-{RUN}", f"fresh-{RUN}", f"old-claimed-{RUN}")}
    assert gone == {f"old-{RUN}": True, f"fresh-{RUN}": False, f"old-claimed-{RUN}": False}
    assert ssh(host, f"test -e {base}/runs/old-{RUN}", check=False).returncode != 0
    ssh(host, f"test -e {base}/results/old-{RUN}.json")  # the record stays
    # Not picked up again by the service: the planted claim is removed.
    ssh(host, f"rm -f {base}/inbox/.claimed/old-claimed-{RUN}.json")
    journal = ssh(host, "journalctl -u autocode-worker-cleanup.service -o cat --no-pager").stdout
    assert "removed 2 folder(s)" in journal


def test_the_temporary_areas_lose_exactly_their_old_files(ssh, converged):
    """The deploy's tmpfiles rule on a real worker, applied by its own systemd-tmpfiles
    (what the daily systemd-tmpfiles-clean.timer runs): old files in /tmp and /var/tmp go,
    fresh ones stay, and a service's private /tmp is left alone (systemd's own rules
    exclude it while the service runs; it goes when the service stops)."""
    host = "worker2"
    days = WORKERS["tmp_cleanup_days"]
    old = int(time.time()) - (days + 1) * 86400
    # Named as systemd names a PrivateTmp= service's (%b: the boot id), so its rules apply.
    top = f"/tmp/systemd-private-$(tr -d - < /proc/sys/kernel/random/boot_id)-lab{RUN}.service-x"
    private = f"{top}/tmp"
    paths = {f"/tmp/old-{RUN}": True, f"/tmp/fresh-{RUN}": False,
             f"/var/tmp/old-{RUN}": True, f"{private}/old": False, f"{private}/fresh": False}
    old_ones = [f"/tmp/old-{RUN}", f"/var/tmp/old-{RUN}", f"{private}/old"]
    ssh(host, f"mkdir -p {private} && touch {' '.join(paths)} && touch -d @{old} "
        + " ".join(old_ones))
    assert ssh(host, "systemctl is-enabled systemd-tmpfiles-clean.timer",
               check=False).stdout.strip() in ("static", "enabled")
    ssh(host, "systemd-tmpfiles --clean")
    gone = {p: ssh(host, f"test -e {p}", check=False).returncode != 0 for p in paths}
    assert gone == paths, gone
    ssh(host, f"rm -rf /tmp/fresh-{RUN} {top}")
    record("temporary areas cleaned", f"{sum(gone.values())} old removed, "
           f"{len(gone) - sum(gone.values())} kept (2 fresh, 1 old in a private /tmp)")
