"""The metering component: the proxy's `metering` section built from group data and the
inventory's workers, bad prices, APIs and limits named by their inventory field before any
host is contacted; and `autocode-budget report` on a real ledger and forwarded logs."""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from autocode.budget import BudgetLedger
from autocode.traffic.config import parse_config
from infra.inventory_file import group_defaults
from infra.settings import HostSettings
from roles import CATALOGUE as components
from settings.metering import Metering
from tasks import filebeat

BUDGET = Path(sys.executable).with_name("autocode-budget")


def orchestrator_problems(**changes) -> str:
    data = {**group_defaults("orchestrator"), "worker_network": "10.0.1.0/24",
            "orchestrator_address": "10.0.1.1", "ssh_hostname": "10.0.0.10", **changes}
    return "\n".join(components.check_host("orchestrator", "orchestrator", data))


def test_the_section_meters_every_worker_with_its_budget_and_agent():
    data = group_defaults("orchestrator")
    workers = {"worker1": {"daily_budget_usd": 25, "agent_type": "aider"},
               "worker2": {"daily_budget_usd": 7.5, "agent_type": "claude-code"}}
    section = Metering.from_data({**data, "llm_apis_extra": [
        {"host": "llm.internal", "path": "/v1/chat/completions", "provider": "openai"}]}
    ).section(data["data_root"], data["timezone"], workers)
    config = parse_config({"spool_dir": "/s", "metering": section}).metering
    assert config.budgets == {"worker1": Decimal("25"), "worker2": Decimal("7.5")}
    assert config.agents == {"worker1": "aider", "worker2": "claude-code"}
    assert str(config.ledger_path) == "/mnt/data/autocode/financial/metered/ledger.sqlite3"
    assert [a.host for a in config.apis] == ["api.anthropic.com", "api.openai.com",
                                            "api.openai.com", "openrouter.ai", "llm.internal"]
    assert config.prices["claude-sonnet-4"].output == Decimal("15")
    assert (config.requests_per_second, config.burst, config.max_concurrent) == (50, 200, 128)
    assert orchestrator_problems() == ""


def test_bad_prices_apis_and_limits_are_refused_naming_the_inventory_field():
    text = orchestrator_problems(
        llm_prices={"m": {"input": "-1", "output": "x"}},
        llm_apis_extra=[{"path": "/v1/x", "provider": "openai"}],
        worker_rate_limit={"requests_per_second": 0}, llm_prices_taken_on="soon",
        budget_warn_share="2", budget_report_calendar="daily; rm -rf /")
    for expected in ("llm_prices.m.input: must be a non-negative finite number, got '-1'",
                     "llm_prices.m.output: must be a number, got 'x'",
                     "llm_apis_extra[0].host: must be a host name",
                     "worker_rate_limit.requests_per_second: must be a number > 0, got 0",
                     "llm_prices_taken_on: must be the date the prices were taken",
                     "budget_warn_share: must be at most 1",
                     "budget_report_calendar: 'daily; rm -rf /' is not a systemd OnCalendar"):
        assert f"orchestrator 'orchestrator': {expected}" in text, expected


def test_report_puts_metered_and_reported_side_by_side_and_flags_a_gap(tmp_path):
    root = tmp_path / "data"
    ledger = BudgetLedger(root / "financial/metered/ledger.sqlite3")
    now = datetime.now(UTC)
    for n, (worker, model, micros) in enumerate([("worker1", "claude-sonnet-4", 120_000),
                                                 ("worker1", "claude-sonnet-4", 80_000),
                                                 ("worker2", "gpt-4o", 50_000)]):
        ledger.charge(idempotency_key=f"metered:f{n}", worker_id=worker, agent="claude-code",
                      task_id="-", amount_usd=Decimal(micros) / 1_000_000, source="metered",
                      at=now, detail={"model": model, "input_tokens": 100, "output_tokens": 10,
                                      "estimated": n == 2, "unknown_model": False})
    ledger.close()
    logs = root / "logs/workers"
    for worker, amount in (("worker1", "0.2"), ("worker2", "0.01")):
        (logs / worker).mkdir(parents=True)
        line = json.dumps({"text": "charged", "record": {
            "extra": {"charge": {"key": f"k-{worker}", "amount_usd": amount}},
            "time": {"timestamp": now.timestamp()}}})
        # The same line forwarded twice, with a syslog prefix: counted once.
        (logs / worker / "worker.log").write_text(f"<14>Dec  2 worker {line}\n{line}\n")
    out = subprocess.run([str(BUDGET), "report", "--data-root", str(root)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    workers = {w["worker"]: w for w in report["workers"]}
    assert workers["worker1"]["metered_usd"] == "0.2"
    assert workers["worker1"]["agent_reported_usd"] == "0.2" and not workers["worker1"]["flagged"]
    assert workers["worker2"]["difference_usd"] == "-0.04" and workers["worker2"]["flagged"]
    (sonnet,) = [g for g in report["by_model"] if g["model"] == "claude-sonnet-4"]
    assert (sonnet["requests"], sonnet["input_tokens"], sonnet["metered_usd"]) == (2, 200, "0.2")
    files = [Path(f) for f in report["files"]]
    assert [f.suffix for f in files] == [".json", ".csv", ".svg", ".ndjson"]
    # The events Filebeat ships (tasks/filebeat.py reads exactly these files).
    assert fnmatch.fnmatch(str(files[3]), filebeat.config(HostSettings(
        {**group_defaults("orchestrator"), "data_root": str(root),
         "elasticsearch_mode": "local"}))["filebeat.inputs"][3]["paths"][0])
    events = [json.loads(line) for line in files[3].read_text().splitlines()]
    by_kind = {(e["spend"]["kind"], e["spend"]["worker"], e["spend"].get("model")): e["spend"]
               for e in events}
    assert len(events) == len(by_kind) == 4  # two workers, two worker/model rows
    assert by_kind[("worker", "worker2", None)]["difference_usd"] == "-0.04"
    assert by_kind[("worker", "worker2", None)]["flagged"] is True
    assert by_kind[("model", "worker1", "claude-sonnet-4")]["metered_usd"] == "0.2"
    assert all(e["@timestamp"].startswith(report["day"]) for e in events)
    ids = [e["spend"]["id"] for e in events]
    assert len(set(ids)) == 4
    # Written again with the same figures: the same ids, so nothing is stored twice.
    again = subprocess.run([str(BUDGET), "report", "--data-root", str(root)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert [json.loads(line)["spend"]["id"] for line in files[3].read_text().splitlines()] \
        == ids
    assert files[2].read_text().startswith("<svg") and "worker2 !" in files[2].read_text()
    assert "claude-sonnet-4" in files[1].read_text()
    bad = subprocess.run([str(BUDGET), "report", "--data-root", str(root), "--day", "May 1"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--day 'May 1'" in bad.stderr


def test_report_counts_the_orchestrators_own_models_from_the_served_ledger(tmp_path):
    """A worker's calls to the local model API, charged by the serving app's accounting at
    the internal price, appear in the report beside its metered remote calls."""
    from autocode.serving.accounting import LEDGER as SERVED
    from autocode.serving.accounting import Accounting

    root = tmp_path / "data"
    ledger = BudgetLedger(root / "financial/metered/ledger.sqlite3")
    ledger.charge(idempotency_key="metered:f1", worker_id="worker1", agent="aider",
                  task_id="-", amount_usd="0.1", source="metered",
                  detail={"model": "gpt-4o", "input_tokens": 10, "output_tokens": 1})
    ledger.close()
    accounting = Accounting(root / SERVED, {"10.0.0.11": "worker1"}, {"worker1": "aider"},
                            {"default": {"input": "10", "output": "20"}})
    for _ in range(2):
        tap = accounting.tap("qwen-2.5-coder-32b", streaming=False)
        tap(json.dumps({"usage": {"prompt_tokens": 1000, "completion_tokens": 100}}).encode())
        accounting.charge("10.0.0.11", "qwen-2.5-coder-32b", tap, 100)
    accounting.close()
    out = subprocess.run([str(BUDGET), "report", "--data-root", str(root)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    # 0.1 remote + 2 x (1000 x 10 + 100 x 20) / 1e6 local
    assert [(w["worker"], w["metered_usd"]) for w in report["workers"]] == [
        ("worker1", "0.124")]
    (local,) = [g for g in report["by_model"] if g["model"] == "qwen-2.5-coder-32b"]
    assert (local["requests"], local["input_tokens"], local["output_tokens"],
            local["metered_usd"]) == (2, 2000, 200, "0.024")


def test_report_units_render():
    from infra.render import render
    unit = render("metering/autocode-budget-report.service.j2", command="/x report",
                  data_root="/mnt/data/autocode")
    assert "ExecStart=/x report" in unit and "PrivateNetwork=yes" in unit
    assert "ReadWritePaths=-/mnt/data/autocode/financial/served" in unit
