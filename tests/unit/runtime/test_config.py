"""worker.yaml and task-file validation: every problem named, with its fix."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
import yaml

from autocode.config import (
    ConfigError,
    TaskFileError,
    load_task_file,
    load_worker_config,
    parse_worker_config,
)


@pytest.fixture
def minimal(tmp_path):
    return {"worker_id": "worker-1", "project_id": "autocode", "agent_type": "claude-code",
            "daily_budget_usd": "25.00", "data_root": str(tmp_path)}


def test_minimal_config_gets_documented_defaults(minimal, tmp_path):
    config = parse_worker_config(minimal)
    assert config.daily_budget_usd == Decimal("25.00")
    assert config.timezone == "UTC" and config.task_timeout_s == 3600
    assert config.artifacts_dir == tmp_path / "worker-artifacts" / "worker-1"
    assert config.inbox_dir == config.artifacts_dir / "inbox"
    assert config.logs_root == tmp_path / "logs"
    agent = config.agent_config()
    assert agent.binary_path is None and agent.max_output_bytes == 16 * 1024 * 1024


def test_full_config_from_yaml(minimal, tmp_path):
    key = tmp_path / "key"
    key.write_text("k")
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump({
        **minimal, "agent_type": "aider", "daily_budget_usd": 7.5, "timezone": "Europe/Berlin",
        "model_endpoint": "http://orchestrator:8000/v1", "model_name": "qwen-2.5-coder-32b",
        "model_api_key_file": str(key), "task_timeout_s": 600, "max_turns": 20,
        "inbox_dir": str(tmp_path / "in"), "agent_binaries": {"aider": "/usr/bin/env"},
        "agent_extra_args": ["--no-stream"]}))
    config = load_worker_config(path)
    assert config.daily_budget_usd == Decimal("7.5") and config.timezone == "Europe/Berlin"
    agent = config.agent_config()
    assert agent.binary_path == "/usr/bin/env" and agent.extra_args == ("--no-stream",)
    assert agent.api_key_file == key and config.inbox_dir == tmp_path / "in"


@pytest.mark.parametrize("change, field, hint", [
    ({"agent_type": "devin"}, "agent_type", "claude-code, cursor-cli, qwen-coder"),
    ({"daily_budget_usd": "-5"}, "daily_budget_usd", "positive amount"),
    ({"daily_budget_usd": "lots"}, "daily_budget_usd", "positive amount"),
    ({"daily_budget_usd": 0}, "daily_budget_usd", "positive amount"),
    ({"daily_budget_usd": None}, "daily_budget_usd", "required"),
    ({"worker_id": "../etc"}, "worker_id", "not a valid name"),
    ({"data_root": "/nonexistent/autocode"}, "data_root", "does not exist; create it"),
    ({"data_root": "relative/path"}, "data_root", "absolute"),
    ({"timezone": "Mars/Olympus"}, "timezone", "IANA"),
    ({"model_endpoint": "orchestrator:8000"}, "model_endpoint", "http(s) URL"),
    ({"model_api_key_file": "/nonexistent/key"}, "model_api_key_file", "does not exist"),
    ({"task_timeout_s": 0}, "task_timeout_s", "> 0"),
    ({"kill_grace_s": -0.5}, "kill_grace_s", ">= 0"),
    ({"poll_interval_s": "5s"}, "poll_interval_s", "a number > 0"),
    ({"max_turns": 2.5}, "max_turns", "an integer"),
    ({"agent_binaries": {"claude-code": "/nonexistent/claude"}}, "agent_binaries.claude-code",
     "does not exist"),
    ({"agent_binaries": {"devin": "devin"}}, "agent_binaries.devin", "unknown agent type"),
    ({"budget": 5}, "budget", "unknown setting"),
])
def test_bad_field_is_named_with_its_fix(minimal, change, field, hint):
    with pytest.raises(ConfigError) as caught:
        parse_worker_config({**minimal, **change})
    message = str(caught.value)
    assert f"{field}: " in message and hint in message


def test_every_problem_is_reported_at_once(minimal):
    with pytest.raises(ConfigError) as caught:
        parse_worker_config({**minimal, "agent_type": "x", "daily_budget_usd": "-1",
                             "timezone": "Nowhere"})
    assert str(caught.value).count("\n  - ") == 3


@pytest.mark.parametrize("text, expected", [
    ("worker_id: [unclosed", "not valid YAML at line 1"),
    ("- a\n- b\n", "mapping"),
])
def test_unreadable_yaml(tmp_path, text, expected):
    path = tmp_path / "worker.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_worker_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_worker_config(tmp_path / "nope.yaml")


def _task(tmp_path, minimal, body) -> object:
    path = tmp_path / "fix-42.json"
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return load_task_file(path, parse_worker_config(minimal))


def test_task_defaults(tmp_path, minimal):
    task = _task(tmp_path, minimal, {"prompt": "Fix it"})
    assert task.task_id == "fix-42" and task.prompt == "Fix it"
    assert task.workdir == tmp_path / "worker-artifacts/worker-1/projects/fix-42"
    full = _task(tmp_path, minimal, {"prompt": "p", "id": "t-1", "workdir": str(tmp_path),
                                     "timeout_s": 60, "max_turns": 5, "max_cost_usd": "1.5"})
    assert (full.task_id, full.workdir, full.timeout_s, full.max_turns, full.max_cost_usd) == (
        "t-1", tmp_path, 60.0, 5, Decimal("1.5"))


@pytest.mark.parametrize("body, expected", [
    ({}, "prompt: required"),
    ({"prompt": "   "}, "prompt: required"),
    ({"prompt": 42}, "prompt: required"),
    ({"prompt": "p", "max_turns": "5"}, "max_turns: '5' must be an integer"),
    ({"prompt": "p", "timeout_s": -1}, "timeout_s: -1 must be a number > 0"),
    ({"prompt": "p", "max_cost_usd": "free"}, "max_cost_usd"),
    ({"prompt": "p", "id": "../../etc/passwd"}, "id: "),
    ({"prompt": "p", "id": "t-1\n"}, "id: "),  # `$` matches before a final newline
    ({"prompt": "p", "workdir": "relative"}, "workdir: 'relative' must be an absolute"),
    ({"prompt": "p", "workdir": "/nonexistent/repo"}, "workdir: /nonexistent/repo does not"),
    ({"prompt": "p", "priority": 1}, "priority: unknown field"),
    (["prompt"], "expected a JSON object"),
    ("{not json", "not valid JSON (line 1"),
])
def test_bad_task_file_is_named(tmp_path, minimal, body, expected):
    with pytest.raises(TaskFileError) as caught:
        _task(tmp_path, minimal, body)
    assert expected in str(caught.value) and "fix-42.json" in str(caught.value)
