"""The front door end to end on this machine, all real processes: autocode-control, the
`autocode task` CLI, `autocode-worker serve` claiming from the service, real git both ways
(the operator's push and fetch over git's local transport here; SSH on the lab), and a
stand-in agent CLI (the real CLIs need their model APIs: the lab runs them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from testing.standins import make_standin, pid_is_gone, read_records
from tests.unit.control.conftest import TOKEN, write_config

REPO_ROOT = Path(__file__).resolve().parents[3]
# The agent: makes a file (or hangs, for HANG), prints Claude Code's result shape.
CLAUDE = """
prompt = sys.argv[sys.argv.index("-p") + 1]
print("thinking about: " + prompt, file=sys.stderr, flush=True)
if "HANG" in prompt:
    time.sleep(300)
if "SLOW" in prompt:
    for n in range(6):
        print(f"step {n}", flush=True)
        time.sleep(0.5)
if "NOTHING" not in prompt:
    with open("fixed.txt", "w") as handle:
        handle.write("fixed by the agent\\n")
print(json.dumps({"type": "result", "subtype": "success", "is_error": False, "num_turns": 3,
                  "result": "done", "session_id": "s", "total_cost_usd": 0.25}))
"""


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


class FrontDoor:
    def __init__(self, tmp_path: Path) -> None:
        # The one worker at 127.0.0.1: the processes here connect from there.
        self.control = write_config(tmp_path, workers={"worker1": {
            "address": "127.0.0.1", "agent_type": "claude-code", "daily_budget_usd": "10"}})
        self.control.start()
        self.tmp = tmp_path
        token_file = tmp_path / "inventory.control-token.json"
        token_file.write_text(json.dumps({"operator_token": TOKEN}))
        token_file.chmod(0o600)
        self.endpoint = tmp_path / "autocode-control.json"
        self.endpoint.write_text(json.dumps({
            "url": self.control.operator_url, "ca_cert": str(self.control.tls["ca"]),
            "token_file": token_file.name,
            "git_remote": str(self.control.data_root / "control" / "repos")}))
        self.src = tmp_path / "app"
        self.git("init", "-q", "-b", "main", str(self.src), cwd=tmp_path)
        (self.src / "test_app.py").write_text("def test_it():\n    assert False\n")
        self.git("add", "-A")
        self.git("commit", "-q", "-m", "a failing test")
        self.record = tmp_path / "calls.jsonl"
        cert, key = self.control.tls["clients"]["worker1"]
        (tmp_path / "data-worker").mkdir()
        self.worker_config = tmp_path / "worker.yaml"
        self.worker_config.write_text(yaml.safe_dump({
            "worker_id": "worker1", "project_id": "p", "agent_type": "claude-code",
            "daily_budget_usd": "10", "data_root": str(tmp_path / "data-worker"),
            "agent_binaries": {"claude-code": str(make_standin(tmp_path / "bin", "claude",
                                                               CLAUDE))},
            "task_timeout_s": 60, "kill_grace_s": 1,
            "orchestrator_url": self.control.worker_url,
            "control_cert": str(cert), "control_key": str(key),
            "control_ca": str(self.control.tls["ca"])}))

    def git(self, *args: str, cwd: Path | None = None) -> str:
        return subprocess.run(["git", "-c", "user.name=Op", "-c", "user.email=op@example.org",
                               *args], cwd=cwd or self.src, check=True, capture_output=True,
                              text=True).stdout.strip()

    def task(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "autocode.control.cli", "--control",
                               str(self.endpoint), "task", *args], capture_output=True,
                              text=True, env=env(), timeout=60)

    def task_json(self, *args: str) -> dict:
        run = self.task(*args, "--json")
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)

    def worker(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "autocode.cli", "serve", "--config",
                                 str(self.worker_config), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**env(), "STANDIN_RECORD": str(self.record)})

    def wait_status(self, task_id: str, wanted: tuple[str, ...], within: float = 30) -> dict:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            record = self.task_json("show", task_id)
            if record["status"] in wanted:
                return record
            time.sleep(0.2)
        raise AssertionError(f"{task_id} still {record['status']}")


@pytest.fixture
def door(tmp_path):
    front = FrontDoor(tmp_path)
    yield front
    front.control.kill()


def test_submit_run_fetch_the_story_end_to_end(door):
    base = door.git("rev-parse", "HEAD")
    submitted = door.task_json("submit", "--repo", str(door.src), "--prompt",
                               "Fix the failing test", "--agent", "claude-code", "--budget", "2")
    assert submitted["status"] == "queued" and submitted["spec"]["base_commit"] == base
    worker = door.worker("--max-tasks", "1")
    assert worker.wait(60) == 0, worker.stderr.read()
    record = door.task_json("show", submitted["id"])
    assert record["status"] == "succeeded", record["reason"]
    result = record["result"]
    assert result["base_commit"] == base and result["files_changed"] == 1
    assert result["lines_added"] == 1 and result["num_turns"] == 3
    assert result["cost_usd"] == "0.25" and result["branch"] == f"autocode/{submitted['id']}"
    assert record["worker"] == "worker1" and record["started_at"] >= record["claimed_at"]
    # The agent ran in a fresh tree at the base, without the worker's git directory in it.
    call = read_records(door.record)[0]
    assert sorted(os.listdir(call["cwd"])) == ["fixed.txt", "test_app.py"]
    assert b"thinking about: Fix the failing test" in subprocess.run(
        [sys.executable, "-m", "autocode.control.cli", "--control", str(door.endpoint),
         "task", "logs", submitted["id"]], capture_output=True, env=env()).stdout
    fetched = door.task_json("fetch", submitted["id"], "--repo", str(door.src))
    branch = fetched["branch"]
    assert door.git("show", f"{branch}:fixed.txt") == "fixed by the agent"
    assert door.git("rev-parse", f"{branch}^") == base
    log = door.git("log", "-1", "--format=%an|%s", branch)
    assert log == f"worker1|autocode {submitted['id']}: Fix the failing test"
    listing = door.task("list")
    assert submitted["id"] in listing.stdout and "0.25 USD" in listing.stdout


def test_cancel_reaches_the_running_agent_and_kills_its_group(door):
    task = door.task_json("submit", "--repo", str(door.src), "--prompt", "HANG please",
                          "--agent", "claude-code")
    worker = door.worker("--max-tasks", "1")
    door.wait_status(task["id"], ("running",))
    deadline = time.monotonic() + 20
    while not read_records(door.record) and time.monotonic() < deadline:
        time.sleep(0.1)
    agent_pid = read_records(door.record)[0]["pid"]
    asked = time.monotonic()
    assert door.task_json("cancel", task["id"])["cancel_requested"] is True
    record = door.wait_status(task["id"], ("cancelled",), within=30)
    print(f"\ncancel to cancelled: {time.monotonic() - asked:.1f} s")
    assert record["reason"] == "cancelled by an operator"
    assert pid_is_gone(agent_pid)
    assert worker.wait(30) == 0
    again = door.task("cancel", task["id"])
    assert again.returncode == 6 and "already ended" in again.stderr


def test_a_worker_pushes_only_its_tasks_branch_and_reads_only_its_tasks_repo(door):
    first = door.task_json("submit", "--repo", str(door.src), "--prompt", "NOTHING to do",
                           "--agent", "claude-code")
    worker = door.worker("--max-tasks", "1")
    assert worker.wait(60) == 0
    assert door.task_json("show", first["id"])["result"]["result_commit"] is None
    # A second task, held by worker1: its git endpoint takes only its own branch.
    second = door.task_json("submit", "--repo", str(door.src), "--prompt", "x",
                            "--agent", "claude-code")
    cert, key = door.control.tls["clients"]["worker1"]
    from autocode.control.client import WorkerClient
    client = WorkerClient(door.control.worker_url, door.control.tls["ca"], cert=cert, key=key)
    assert client.claim()["id"] == second["id"]
    git = ["git", "-c", f"http.sslCert={cert}", "-c", f"http.sslKey={key}", "-c",
           f"http.sslCAInfo={door.control.tls['ca']}"]
    url = f"{door.control.worker_url}/v1/worker/git/{second['id']}.git"
    door.git("commit", "-q", "--allow-empty", "-m", "mine")
    clean = {k: v for k, v in os.environ.items() if k != "GIT_SSL_CAINFO"}  # it beats -c
    clean["GIT_TERMINAL_PROMPT"] = "0"
    for ref in ("refs/heads/main", f"refs/heads/autocode/{first['id']}", "refs/tags/v1",
                "refs/autocode/bases/x"):
        push = subprocess.run([*git, "push", url, f"HEAD:{ref}"], cwd=door.src,
                              capture_output=True, text=True, env=clean, timeout=60)
        assert push.returncode != 0 and "may push only" in push.stderr, (ref, push.stderr)
    own = subprocess.run([*git, "push", url, f"HEAD:refs/heads/autocode/{second['id']}"],
                         cwd=door.src, capture_output=True, text=True, env=clean, timeout=60)
    assert own.returncode == 0, own.stderr
    # The first task's endpoint is closed to it now (it holds the second), as is any other.
    other = subprocess.run([*git, "ls-remote", url.replace(second["id"], first["id"])],
                           capture_output=True, text=True, env=clean, timeout=60)
    assert other.returncode != 0 and "403" in other.stderr
    # Other tasks' result branches are hidden from its fetches.
    refs = subprocess.run([*git, "ls-remote", url], capture_output=True, text=True, env=clean,
                          timeout=60)
    assert refs.returncode == 0 and "refs/heads/autocode/" not in refs.stdout
    client.finish(second["id"], "failed", "test over")


def test_a_reader_that_stops_early_gets_no_traceback(door):
    """`autocode task list | head -1`: the reader goes before the listing is written (here
    its end of the pipe is closed at once); the CLI stops quietly, status 0."""
    door.task_json("submit", "--repo", str(door.src), "--prompt", "p", "--agent",
                   "claude-code")
    listing = subprocess.Popen(
        [sys.executable, "-m", "autocode.control.cli", "--control", str(door.endpoint),
         "task", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())
    listing.stdout.close()
    stderr = listing.stderr.read().decode()
    assert listing.wait(60) == 0 and stderr == "", stderr


def test_bad_input_at_the_cli_queues_nothing_and_says_why(door, tmp_path):
    empty = tmp_path / "empty"
    door.git("init", "-q", str(empty), cwd=tmp_path)
    cases = [
        (["--repo", str(tmp_path / "nowhere")], 2, "no such folder"),
        (["--repo", str(tmp_path)], 2, "not a git repository"),
        (["--repo", str(empty)], 2, "no commit yet"),
        (["--repo", str(door.src), "--agent", "codex"], 2, "agent_type: no worker runs"),
        (["--repo", str(door.src), "--agent", "claude-code", "--budget", "NaN"], 2,
         "budget_usd"),
        (["--repo", str(door.src), "--agent", "claude-code", "--budget", "0"], 2,
         "not a positive amount"),
        (["--repo", str(door.src), "--worker", "worker9"], 2, "no worker 'worker9'"),
    ]
    for extra, code, message in cases:
        run = door.task("submit", "--prompt", "p", *extra)
        assert run.returncode == code and message in run.stderr, (extra, run.stderr)
    assert door.task_json("list") == []
    missing = door.task("show", "t-000000-0000000000")
    assert missing.returncode == 5 and "no task" in missing.stderr
    token = json.loads(door.endpoint.read_text())
    token_file = tmp_path / "inventory.control-token.json"
    token_file.write_text(json.dumps({"operator_token": "wrong"}))
    wrong = door.task("list")
    assert wrong.returncode == 4 and "token" in wrong.stderr, wrong.stderr
    token_file.chmod(0o644)
    open_to_all = door.task("list")
    assert open_to_all.returncode == 2 and "chmod 600" in open_to_all.stderr
    token_file.write_text("not json")
    token_file.chmod(0o600)
    garbled = door.task("list")
    assert garbled.returncode == 2 and "not the deploy's JSON" in garbled.stderr
    token_file.write_text(json.dumps({"operator_token": TOKEN}))
    door.endpoint.write_text(json.dumps({**token, "url": "https://127.0.0.1:1"}))
    down = door.task("list")
    assert down.returncode == 3 and "cannot reach" in down.stderr


def test_logs_follow_while_it_runs_and_a_kill_9_of_the_service_loses_nothing(door):
    """The agent's output is read as it comes; autocode-control killed with SIGKILL while
    the task runs and started again: the worker's heartbeats and report wait for it, and
    the task ends succeeded, once."""
    task = door.task_json("submit", "--repo", str(door.src), "--prompt", "SLOW steps",
                          "--agent", "claude-code")
    worker = door.worker("--max-tasks", "1")
    door.wait_status(task["id"], ("running",))
    follow = subprocess.Popen(
        [sys.executable, "-m", "autocode.control.cli", "--control", str(door.endpoint),
         "task", "logs", task["id"], "--follow"], stdout=subprocess.PIPE, text=True, env=env())
    first = follow.stdout.readline()
    assert first.startswith("thinking about") or first.startswith("step"), first
    door.control.kill()
    time.sleep(2)
    door.control.start()
    assert worker.wait(60) == 0, worker.stderr.read()
    rest = follow.communicate(timeout=30)[0]
    shown = door.task_json("show", task["id"])
    assert follow.returncode == 0, (shown["status"], shown["reason"], first + rest)
    assert "step 5" in first + rest
    record = door.task_json("show", task["id"])
    assert record["status"] == "succeeded" and record["result"]["files_changed"] == 1
    assert len(door.task_json("list")) == 1


def test_a_worker_stopped_mid_task_reports_it_interrupted_and_kills_the_agent(door):
    task = door.task_json("submit", "--repo", str(door.src), "--prompt", "HANG here",
                          "--agent", "claude-code")
    worker = door.worker()
    door.wait_status(task["id"], ("running",))
    deadline = time.monotonic() + 20
    while not read_records(door.record) and time.monotonic() < deadline:
        time.sleep(0.1)
    agent_pid = read_records(door.record)[0]["pid"]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 128 + signal.SIGTERM
    record = door.task_json("show", task["id"])
    assert record["status"] == "interrupted" and "worker was stopped" in record["reason"]
    assert pid_is_gone(agent_pid)
