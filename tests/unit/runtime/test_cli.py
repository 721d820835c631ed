"""autocode-worker invoked as a real subprocess: run, serve, budget, and their failures."""

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

WORKER = Path(sys.executable).parent / "autocode-worker"

# Behaviour follows the prompt: FAIL exits 1, HANG sleeps, anything else succeeds at $0.50.
CLAUDE_BY_PROMPT = """
prompt = sys.argv[sys.argv.index("-p") + 1]
if "FAIL" in prompt:
    sys.stderr.write("Error: model endpoint refused the request\\n")
    sys.exit(1)
if "HANG" in prompt:
    time.sleep(300)
print(json.dumps({"type": "result", "subtype": "success", "is_error": False, "num_turns": 2,
                  "result": "done: " + prompt, "session_id": "s", "total_cost_usd": 0.5}))
"""


@pytest.fixture
def worker(tmp_path):
    return WorkerHarness(tmp_path)


class WorkerHarness:
    def __init__(self, tmp_path: Path):
        self.root = tmp_path / "data"
        self.root.mkdir()
        self.binary = make_standin(tmp_path / "bin", "claude", CLAUDE_BY_PROMPT)
        self.record = tmp_path / "calls.jsonl"
        self.config_path = tmp_path / "worker.yaml"
        self.settings = {"worker_id": "worker-1", "project_id": "proj", "agent_type":
                         "claude-code", "daily_budget_usd": "10", "data_root": str(self.root),
                         "agent_binaries": {"claude-code": str(self.binary)},
                         "task_timeout_s": 30, "kill_grace_s": 0.5}
        self.write_config()
        self.artifacts = self.root / "worker-artifacts" / "worker-1"
        self.inbox = self.artifacts / "inbox"

    def write_config(self, **changes) -> Path:
        self.config_path.write_text(yaml.safe_dump({**self.settings, **changes}))
        return self.config_path

    def env(self, **extra) -> dict[str, str]:
        return {**os.environ, "STANDIN_RECORD": str(self.record), **extra}

    def run(self, *args, env=None, timeout=60) -> subprocess.CompletedProcess:
        return subprocess.run([str(WORKER), *args, "--config", str(self.config_path)],
                              capture_output=True, text=True, timeout=timeout,
                              env=env or self.env())

    def popen(self, *args) -> subprocess.Popen:
        return subprocess.Popen([str(WORKER), *args, "--config", str(self.config_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env())

    def task_file(self, name: str, body, directory: Path | None = None) -> Path:
        directory = directory or self.inbox
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        path.write_text(body if isinstance(body, str) else json.dumps(body))
        return path

    def result(self, task_id: str) -> dict:
        return json.loads((self.artifacts / "results" / f"{task_id}.json").read_text())

    def calls(self) -> list[dict]:
        return read_records(self.record)


def _wait_for(predicate, timeout_s=15.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_help_works():
    out = subprocess.run([str(WORKER), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    for command in ("run", "serve", "budget"):
        assert command in out.stdout


def test_run_success_writes_result_charges_and_logs(worker, tmp_path):
    task = worker.task_file("t1.json", {"prompt": "add tests"}, tmp_path)
    out = worker.run("run", "--task-file", str(task))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["status"] == "succeeded" and result["cost_usd"] == "0.5"
    assert worker.result("t1")["result"]["summary"] == "done: add tests"
    assert (worker.artifacts / "projects" / "t1").is_dir()  # default workdir created
    assert (worker.artifacts / "runs" / "t1" / "stdout.log").exists()
    argv = worker.calls()[0]["argv"]
    assert argv[argv.index("--max-budget-usd") + 1] == "10.0000"

    budget = worker.run("budget", "--json", "--write-report")
    report = json.loads(budget.stdout)
    assert (report["spent_usd"], report["remaining_usd"], report["allowed"]) == (
        "0.5", "9.5", True)
    assert all(Path(p).exists() for p in report["reports"])
    assert "financial/reports/daily-" in report["reports"][0]
    text = worker.run("budget")
    assert "spent 0.5 of 10 USD, remaining 9.5 USD" in text.stdout

    (log_file,) = (worker.root / "logs" / "workers").glob("worker_*.log")
    records = [json.loads(line)["record"] for line in log_file.read_text().splitlines()]
    assert any("task t1 finished: status=succeeded" in r["message"] for r in records)
    assert all(r["extra"]["worker_id"] == "worker-1" for r in records)


def test_run_failing_task_exits_1(worker, tmp_path):
    task = worker.task_file("t2.json", {"prompt": "FAIL please"}, tmp_path)
    out = worker.run("run", "--task-file", str(task))
    assert out.returncode == 1
    result = json.loads(out.stdout)
    assert result["status"] == "failed" and "model endpoint refused" in result["error"]


def test_run_refused_when_budget_spent_exits_3(worker, tmp_path):
    worker.write_config(daily_budget_usd="0.5")
    task = worker.task_file("a.json", {"prompt": "one"}, tmp_path)
    assert worker.run("run", "--task-file", str(task)).returncode == 0
    task = worker.task_file("b.json", {"prompt": "two"}, tmp_path)
    out = worker.run("run", "--task-file", str(task))
    assert out.returncode == 3 and json.loads(out.stdout)["status"] == "refused_budget"
    assert len(worker.calls()) == 1  # the CLI never ran for the refused task


@pytest.mark.parametrize("change, expected", [
    ({"agent_type": "devin"}, "agent_type: unknown agent type 'devin'"),
    ({"daily_budget_usd": "-3"}, "daily_budget_usd: '-3' is not a positive amount"),
    ({"data_root": "/nonexistent/autocode"}, "data_root: /nonexistent/autocode does not exist"),
])
def test_bad_config_exits_2_without_traceback(worker, tmp_path, change, expected):
    worker.write_config(**change)
    task = worker.task_file("t.json", {"prompt": "p"}, tmp_path)
    for args in (("run", "--task-file", str(task)), ("serve", "--once"), ("budget",)):
        out = worker.run(*args)
        assert out.returncode == 2
        assert expected in out.stderr and "Traceback" not in out.stderr


def test_bad_task_file_exits_2(worker, tmp_path):
    task = worker.task_file("t.json", {"prompt": "p", "max_turns": "many"}, tmp_path)
    out = worker.run("run", "--task-file", str(task))
    assert out.returncode == 2 and "max_turns: 'many' must be an integer" in out.stderr
    assert "Traceback" not in out.stderr and worker.calls() == []


def test_missing_agent_binary_exits_2_naming_the_package(worker, tmp_path):
    worker.write_config(agent_binaries={})
    task = worker.task_file("t.json", {"prompt": "p"}, tmp_path)
    out = worker.run("run", "--task-file", str(task), env=worker.env(PATH=str(tmp_path)))
    assert out.returncode == 2
    assert "@anthropic-ai/claude-code" in out.stderr and "Traceback" not in out.stderr


def test_serve_runs_inbox_and_sets_bad_files_aside(worker):
    worker.task_file("01-good.json", {"prompt": "first", "id": "good-1"})
    worker.task_file("02-broken.json", "{not json")
    worker.task_file("03-noprompt.json", {"workdir": "/tmp"})
    worker.task_file("04-fails.json", {"prompt": "FAIL now"})
    out = worker.run("serve", "--once", "--poll-interval", "0.1")
    assert out.returncode == 0, out.stderr

    assert worker.result("good-1")["result"]["status"] == "succeeded"
    assert worker.result("04-fails")["result"]["status"] == "failed"
    rejected = worker.artifacts / "rejected"
    assert "not valid JSON" in (rejected / "02-broken.json.reason.txt").read_text()
    assert "prompt: required" in (rejected / "03-noprompt.json.reason.txt").read_text()
    assert list(worker.inbox.glob("*.json")) == []
    assert list((worker.inbox / ".claimed").iterdir()) == []
    assert (worker.artifacts / "results" / "good-1.task.json").exists()
    assert len(worker.calls()) == 2

    # The same id again is not run twice: it is set aside with the reason.
    worker.task_file("05-again.json", {"prompt": "first", "id": "good-1"})
    assert worker.run("serve", "--once").returncode == 0
    assert "already has a result" in (rejected / "05-again.json.reason.txt").read_text()
    assert len(worker.calls()) == 2


def test_serve_max_tasks_and_budget_stop(worker):
    worker.write_config(daily_budget_usd="1.0")
    for i in range(4):
        worker.task_file(f"{i}.json", {"prompt": f"task {i}"})
    assert worker.run("serve", "--max-tasks", "1", "--poll-interval", "0.1").returncode == 0
    assert len(worker.calls()) == 1
    # $0.50 each: one more fits, then the budget is spent and the rest wait.
    out = worker.run("serve", "--once")
    assert out.returncode == 3 and "daily budget spent" in out.stderr
    assert len(worker.calls()) == 2 and len(list(worker.inbox.glob("*.json"))) == 2


def _start_serve_on_hanging_task(worker) -> tuple[subprocess.Popen, int]:
    worker.task_file("hang.json", {"prompt": "HANG forever"})
    serve = worker.popen("serve", "--poll-interval", "0.1")
    _wait_for(lambda: len(worker.calls()) == 1)
    return serve, worker.calls()[0]["pid"]


def test_crash_mid_task_is_recorded_as_interrupted_not_rerun(worker):
    serve, agent_pid = _start_serve_on_hanging_task(worker)
    serve.kill()  # SIGKILL: no chance to clean up, like a power cut
    serve.wait(10)
    os.killpg(agent_pid, signal.SIGKILL)  # the orphaned agent; its own process group
    assert (worker.inbox / ".claimed" / "hang.json").exists()

    worker.task_file("next.json", {"prompt": "after the crash"})
    out = worker.run("serve", "--once")
    assert out.returncode == 0, out.stderr
    record = worker.result("hang")
    assert record["result"]["status"] == "interrupted"
    assert "not re-run" in record["result"]["error"]
    assert worker.result("next")["result"]["status"] == "succeeded"
    prompts = [c["argv"][c["argv"].index("-p") + 1] for c in worker.calls()]
    assert prompts == ["HANG forever", "after the crash"]  # the hung task ran exactly once
    assert not (worker.inbox / ".claimed" / "hang.json").exists()


def test_sigterm_mid_task_kills_the_agent_and_exits(worker):
    serve, agent_pid = _start_serve_on_hanging_task(worker)
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(15) == 128 + signal.SIGTERM
    _wait_for(lambda: pid_is_gone(agent_pid), 5)
    assert worker.run("serve", "--once").returncode == 0
    assert worker.result("hang")["result"]["status"] == "interrupted"


def test_check_validates_config_and_finds_the_agent_cli_without_touching_anything(worker):
    out = worker.run("check")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok: worker worker-1, agent claude-code (")
    # A check leaves no ledger, log or folder behind (it runs on files not yet in place).
    assert sorted(p.name for p in worker.root.iterdir()) == []
    missing = worker.run("check", "--agent-type", "aider")
    assert missing.returncode == 2 and "aider: command 'aider' not found" in missing.stderr
    worker.write_config(max_turns=0)
    bad = worker.run("check")
    assert bad.returncode == 2 and "max_turns: 0 is not valid" in bad.stderr


def test_environment_and_agent_type_override_the_file_and_are_checked(worker, tmp_path):
    out = worker.run("check", env=worker.env(DAILY_BUDGET="3.5", PROJECT_ID="other",
                                             ORCHESTRATOR_URL="http://10.0.1.1"))
    assert out.returncode == 0, out.stderr
    assert "daily budget 3.5 USD" in out.stdout
    bad = worker.run("check", env=worker.env(DAILY_BUDGET="-1"))
    assert bad.returncode == 2
    assert "daily_budget_usd (from environment variable DAILY_BUDGET): '-1'" in bad.stderr
    wrong = worker.run("serve", "--once", "--agent-type", "codex")
    assert wrong.returncode == 2 and "agent_type (from --agent-type): unknown" in wrong.stderr
    task = worker.task_file("t2.json", {"prompt": "x"}, tmp_path)
    ran = worker.run("run", "--task-file", str(task), env=worker.env(DAILY_BUDGET="0.25"))
    # The budget the environment gives is the one the CLI gets as its cap.
    argv = worker.calls()[-1]["argv"]
    assert ran.returncode == 0 and argv[argv.index("--max-budget-usd") + 1] == "0.2500"


def test_cleanup_removes_exactly_the_old_finished_tasks_folders(worker, tmp_path):
    worker.write_config(cleanup_after_days=7)
    old, fresh = time.time() - 8 * 86400, time.time() - 86400
    layout = {"old-done": old, "fresh-done": fresh, "old-running": old, "old-named": old}
    for task_id, mtime in layout.items():
        for folder in ("projects", "runs"):
            (worker.artifacts / folder / task_id / "sub").mkdir(parents=True)
            (worker.artifacts / folder / task_id / "sub" / "f.txt").write_text("x")
        result = worker.artifacts / "results" / f"{task_id}.json"
        result.parent.mkdir(parents=True, exist_ok=True)
        result.write_text("{}")
        os.utime(result, (mtime, mtime))
    claimed = worker.inbox / ".claimed"
    claimed.mkdir(parents=True)
    (claimed / "old-running.json").write_text('{"prompt": "x"}')
    (claimed / "file-name.json").write_text('{"prompt": "x", "id": "old-named"}')
    # A planted link must not lead the cleanup out of its folders.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (worker.artifacts / "projects" / "old-link").symlink_to(outside)
    link_result = worker.artifacts / "results" / "old-link.json"
    link_result.write_text("{}")
    os.utime(link_result, (old, old))

    dry = worker.run("cleanup", "--dry-run")
    assert dry.returncode == 0 and "would remove 2 folder(s)" in dry.stdout
    assert (worker.artifacts / "projects" / "old-done").is_dir()
    out = worker.run("cleanup")
    assert out.returncode == 0 and "removed 2 folder(s)" in out.stdout, out.stdout
    left = {(f, t) for f in ("projects", "runs") for t in layout
            if (worker.artifacts / f / t).is_dir()}
    assert left == {(f, t) for f in ("projects", "runs")
                    for t in ("fresh-done", "old-running", "old-named")}
    assert (worker.artifacts / "results" / "old-done.json").exists()  # the record stays
    assert (outside / "keep.txt").read_text() == "keep"
