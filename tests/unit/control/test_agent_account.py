"""The agent cannot act as its worker: with `agent_user`, the agent's CLI runs under an
account of its own, and tries, during its task, what it must not do: read the worker's
client key for autocode-control, write into the worker's own git directory for the task,
read the worker's environment. Needs root (to run a child as another account), as CI is."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest
import yaml

from tests.unit.control.test_front_door import FrontDoor, env

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="runs a child as another account")

# /usr/bin/python3: the agent's account cannot reach the test's own interpreter under /root.
AGENT = """#!/usr/bin/python3
import json, os, sys
tries = {"uid": os.getuid(), "groups": os.getgroups()}
def attempt(name, action):
    try:
        action()
        tries[name] = "done"
    except OSError as exc:
        tries[name] = type(exc).__name__
attempt("read_control_key", lambda: open(os.environ["KEY_PATH"]).read())
task_id = os.path.basename(os.getcwd())
git_dir = os.path.join(os.getcwd(), "..", "..", "runs", task_id, "git")
attempt("write_worker_git", lambda: open(os.path.join(git_dir, "hooks-planted"), "w").write("x"))
attempt("read_worker_environ", lambda: open(f"/proc/{os.getppid()}/environ", "rb").read())
with open("made.txt", "w") as handle:
    handle.write("made by the agent\\n")
with open(os.environ["RECORD"], "a") as handle:
    handle.write(json.dumps(tries) + "\\n")
print(json.dumps({"type": "result", "subtype": "success", "is_error": False, "num_turns": 1,
                  "result": "done", "session_id": "s", "total_cost_usd": 0.01}))
"""


@needs_root
def test_the_agent_cannot_read_the_workers_key_or_touch_its_git(tmp_path, open_tree):
    door = FrontDoor(tmp_path)
    try:
        keys, data, bin_dir, records = (open_tree / n for n in ("keys", "data", "bin", "rec"))
        for folder, mode in ((keys, 0o755), (data, 0o755), (bin_dir, 0o755), (records, 0o777)):
            folder.mkdir()
            folder.chmod(mode)
        config = yaml.safe_load(door.worker_config.read_text())
        key = keys / "worker1-key.pem"
        shutil.copy(config["control_key"], key)
        key.chmod(0o600)  # the worker's alone: the deploy writes it so
        agent = bin_dir / "claude"
        agent.write_text(AGENT)
        agent.chmod(0o755)
        config.update(control_key=str(key), data_root=str(data), agent_user="nobody",
                      agent_binaries={"claude-code": str(agent)})
        door.worker_config.write_text(yaml.safe_dump(config))
        record = records / "tries.jsonl"
        task = door.task_json("submit", "--repo", str(door.src), "--prompt", "make it",
                              "--agent", "claude-code")
        # The stand-in finds these in its environment, as any agent could find the paths.
        worker = subprocess.Popen(
            [sys.executable, "-m", "autocode.cli", "serve", "--config",
             str(door.worker_config), "--max-tasks", "1"], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
            env={**env(), "KEY_PATH": str(key), "RECORD": str(record)})
        assert worker.wait(60) == 0, worker.stderr.read()
    finally:
        door.control.kill()
    tries = json.loads(record.read_text()) if record.exists() else None
    assert tries is not None, "the agent did not run"
    nobody = 65534
    assert tries["uid"] == nobody and tries["groups"] == []
    assert tries["read_control_key"] == "PermissionError"
    assert tries["write_worker_git"] == "PermissionError"
    assert tries["read_worker_environ"] == "PermissionError"
    outcome = json.loads((data / "worker-artifacts" / "worker1" / "results" /
                          f"{task['id']}.json").read_text())
    assert outcome["status"] == "succeeded", outcome
    assert outcome["result"]["files_changed"] == 1
    tree = data / "worker-artifacts" / "worker1" / "projects" / task["id"]
    made = tree / "made.txt"
    assert made.stat().st_uid == 0 and stat.S_ISREG(made.stat().st_mode)  # handed back


@pytest.mark.parametrize("user, message", [
    ("no-such-account-here", "no account 'no-such-account-here' on this host"),
    ("bad name", "is not an account name"),
    (7, "is not an account name"),
])
def test_a_bad_agent_user_is_refused_naming_the_setting(tmp_path, user, message):
    from autocode.config import ConfigError, parse_worker_config
    with pytest.raises(ConfigError) as caught:
        parse_worker_config({"worker_id": "w", "project_id": "p", "agent_type": "aider",
                             "daily_budget_usd": "1", "data_root": str(tmp_path),
                             "agent_user": user})
    assert "agent_user: " in str(caught.value) and message in str(caught.value)
