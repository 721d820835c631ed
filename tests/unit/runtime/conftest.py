"""Fixtures for the runtime unit tests: stand-in agent executables and agent configs.

The real agent CLIs need accounts and remote model APIs, so these tests run the agent
classes against small Python scripts that print the documented output shapes and record
the argv, environment and working directory they were started with.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from autocode.agents.types import AgentConfig

STANDIN_PRELUDE = f"""#!{sys.executable}
import json, os, sys, time
_record = os.environ.get("STANDIN_RECORD")
if _record:
    with open(_record, "a") as _handle:
        _handle.write(json.dumps({{"argv": sys.argv, "env": dict(os.environ),
                                   "cwd": os.getcwd(), "pid": os.getpid()}}) + "\\n")
"""


def make_standin(directory: Path, name: str, body: str) -> Path:
    """Write an executable stand-in CLI called `name` whose behaviour is `body` (Python)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(STANDIN_PRELUDE + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def read_records(record_file: Path) -> list[dict]:
    if not record_file.exists():
        return []
    return [json.loads(line) for line in record_file.read_text().splitlines() if line]


@pytest.fixture
def record_file(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "standin-calls.jsonl"
    monkeypatch.setenv("STANDIN_RECORD", str(path))
    return path


@pytest.fixture
def agent_config_for(tmp_path):
    """Build an AgentConfig rooted in tmp_path; keyword arguments override fields."""

    def build(**overrides) -> AgentConfig:
        workdir = tmp_path / "work"
        workdir.mkdir(exist_ok=True)
        values = dict(
            worker_id="worker-1", project_id="proj-1", daily_budget_usd=Decimal("10"),
            workdir=workdir, logs_dir=tmp_path / "runs",
            model_endpoint="http://127.0.0.1:9/v1", model_name="qwen-test",
            task_timeout_s=30.0, kill_grace_s=0.5,
        )
        values.update(overrides)
        return AgentConfig(**values)

    return build


def pid_is_gone(pid: int) -> bool:
    """True when pid no longer runs (absent, or a zombie waiting for its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def without_env(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}
