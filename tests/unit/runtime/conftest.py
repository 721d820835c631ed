"""Fixtures for the runtime unit tests: stand-in agent executables and agent configs.

The real agent CLIs need accounts and remote model APIs, so these tests run the agent
classes against small Python scripts that print the documented output shapes and record
the argv, environment and working directory they were started with.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from autocode.agents.types import AgentConfig


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


