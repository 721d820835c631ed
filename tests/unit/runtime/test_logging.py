"""configure_logging writes real JSON-lines files with the bound worker fields."""

from __future__ import annotations

import json
from datetime import date

import pytest
from loguru import logger

from autocode import logging as autocode_logging
from autocode.logging import configure_logging, remove_logging


@pytest.fixture(autouse=True)
def _clean_sinks():
    yield
    remove_logging()


def _lines(log_dir):
    files = sorted(log_dir.glob("*.log"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


def test_file_sink_writes_json_lines_with_bound_fields(tmp_path, capsys):
    log_dir = configure_logging("worker", tmp_path, worker_id="worker-3", project_id="proj-9")
    logger.info("task {} started", "t-1")
    logger.debug("below INFO: not written")

    assert log_dir == tmp_path / "worker"
    (path,) = log_dir.glob("*.log")
    assert path.name == f"worker_{date.today().isoformat()}.log"
    (line,) = _lines(log_dir)
    record = line["record"]
    assert line["text"].rstrip().endswith("task t-1 started")
    assert record["message"] == "task t-1 started" and record["level"]["name"] == "INFO"
    assert record["extra"] == {"component": "worker", "worker_id": "worker-3",
                               "project_id": "proj-9"}
    console = capsys.readouterr().err
    assert "| INFO     | task t-1 started" in console and "below INFO" not in console


def test_calling_twice_does_not_duplicate_sinks(tmp_path, capsys):
    configure_logging("worker", tmp_path / "a", worker_id="w1")
    configure_logging("worker", tmp_path / "b", worker_id="w2")
    logger.info("once")
    assert _lines(tmp_path / "a" / "worker") == []
    lines = _lines(tmp_path / "b" / "worker")
    assert len(lines) == 1 and lines[0]["record"]["extra"]["worker_id"] == "w2"
    assert capsys.readouterr().err.count("once") == 1


def test_console_can_be_off(tmp_path, capsys):
    configure_logging("orchestrator", tmp_path, console=False)
    logger.warning("quiet")
    assert capsys.readouterr().err == ""
    assert _lines(tmp_path / "orchestrator")[0]["record"]["message"] == "quiet"


def test_retention_policy_matches_the_seed():
    assert autocode_logging.ROTATION == "00:00"
    assert autocode_logging.RETENTION == "30 days"


def test_tracebacks_do_not_dump_local_variables(tmp_path):
    configure_logging("worker", tmp_path, console=False)
    token = "hvs.LOCAL-VARIABLE-SECRET"  # noqa: F841 - a local that diagnose would print
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed")
    text = (next((tmp_path / "worker").glob("*.log"))).read_text()
    assert "boom" in text and "LOCAL-VARIABLE-SECRET" not in text
