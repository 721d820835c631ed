"""Spend metering at the egress proxy: which hosts are LLM APIs, what their models cost,
each worker's cap and rate limits (the `metering` section of the proxy's traffic.yaml,
autocode/traffic/metering.py), the central ledger's folder, and the daily spend report.

The proxy is the only way out of a worker, so every LLM call an agent or any tool on the
worker makes is metered here, whatever the agent itself reports.
"""

from __future__ import annotations

from pyinfra import host, inventory
from pyinfra.api import deploy

from autocode.traffic.metering import parse_metering
from infra.component import Component
from infra.operations import systemd_unit
from infra.render import render
from infra.validation import Problems, check_calendar
from tasks import runtime

LEDGER = "financial/metered/ledger.sqlite3"
REPORT_UNITS = ("autocode-budget-report.service", "autocode-budget-report.timer")
# The providers' list prices, USD per million tokens, as published on the date below;
# check them against the providers' pages and override `llm_prices` when they change.
PRICES = {
    "claude-opus-4-5": {"input": "5", "output": "25", "cache_read": "0.50",
                        "cache_write": "6.25"},
    "claude-opus-4": {"input": "15", "output": "75", "cache_read": "1.50",
                      "cache_write": "18.75"},
    "claude-sonnet-4": {"input": "3", "output": "15", "cache_read": "0.30",
                        "cache_write": "3.75"},
    "claude-haiku-4-5": {"input": "1", "output": "5", "cache_read": "0.10",
                         "cache_write": "1.25"},
    "claude-3-5-haiku": {"input": "0.80", "output": "4", "cache_read": "0.08",
                         "cache_write": "1"},
    "gpt-5": {"input": "1.25", "output": "10", "cache_read": "0.125"},
    "gpt-4.1": {"input": "2", "output": "8", "cache_read": "0.50"},
    "gpt-4.1-mini": {"input": "0.40", "output": "1.60", "cache_read": "0.10"},
    "gpt-4o": {"input": "2.50", "output": "10", "cache_read": "1.25"},
    "gpt-4o-mini": {"input": "0.15", "output": "0.60", "cache_read": "0.075"},
}


class _ProblemsAdapter:
    """The runtime's (field, problem, fix) problems as the deploy's (field, text) ones,
    named by the inventory field that sets each."""

    FIELDS = {"apis": "llm_apis_extra", "prices": "llm_prices",
              "unknown_model_price": "llm_unknown_model_price",
              "prices_taken_on": "llm_prices_taken_on", "warn_share": "budget_warn_share",
              "rate_limit": "worker_rate_limit", "workers": "daily_budget_usd"}

    def __init__(self, problems: Problems, defaults: int):
        self.problems = problems
        self.defaults = defaults

    def add(self, field_name: str, problem: str, fix: str) -> None:
        parts = field_name.split(".", 2)
        section = parts[1].split("[")[0] if len(parts) > 1 else field_name
        rest = field_name[len(f"metering.{section}"):]
        if section == "apis" and rest.startswith("["):  # index among the operator's own
            index, tail = rest[1:].split("]", 1)
            rest = f"[{int(index) - self.defaults}]{tail}"
        name = self.FIELDS.get(section, f"metering.{section}") + rest
        self.problems.add(name, f"{problem}; {fix}")


def metering_section(data, workers: dict[str, dict]) -> dict:
    """The traffic config's `metering` section; `workers`: name -> its host data."""
    return {
        "ledger": f"{data['data_root']}/{LEDGER}",
        "timezone": data["timezone"],
        "apis": [*data["llm_apis"], *data["llm_apis_extra"]],
        "prices": data["llm_prices"],
        "prices_taken_on": str(data["llm_prices_taken_on"]),
        "unknown_model_price": data["llm_unknown_model_price"],
        "warn_share": str(data["budget_warn_share"]),
        "inject_stream_usage": True,
        "rate_limit": {k: v for k, v in (data["worker_rate_limit"] or {}).items()},
        "workers": {name: {"daily_budget_usd": str(w.get("daily_budget_usd")),
                           "agent_type": str(w.get("agent_type", "unknown"))}
                    for name, w in workers.items()},
    }


def check(problems: Problems, role: str, data) -> None:
    check_calendar(problems, "budget_report_calendar", data.get("budget_report_calendar"),
                   "*-*-* 00:10:00")
    required = ("llm_apis", "llm_apis_extra", "llm_prices", "llm_unknown_model_price",
                "llm_prices_taken_on", "budget_warn_share", "worker_rate_limit")
    if any(field not in data for field in required):
        return
    for field in ("llm_apis", "llm_apis_extra"):
        if not isinstance(data[field], list):
            problems.add(field, "must be a list of {host, path, provider}")
            return
    limit = data["worker_rate_limit"]
    if not isinstance(limit, dict):
        problems.add("worker_rate_limit", "must map requests_per_second, burst and "
                     "max_concurrent to numbers, or be {} for no limit")
        return
    # Checked by the runtime's own parser, as the proxy will read it; the data root, time
    # zone and budgets are the base and runtime components' to check.
    section = metering_section({**data, "data_root": "/checked-by-base", "timezone": "UTC"},
                               {})
    parse_metering(_ProblemsAdapter(problems, len(data["llm_apis"])), section)


COMPONENT = Component(
    name="metering",
    settings={
        # LLM APIs whose calls are metered: POST to exactly this host and path.
        "llm_apis": [
            {"host": "api.anthropic.com", "path": "/v1/messages", "provider": "anthropic"},
            {"host": "api.openai.com", "path": "/v1/chat/completions", "provider": "openai"},
            {"host": "api.openai.com", "path": "/v1/responses", "provider": "openai"},
            {"host": "openrouter.ai", "path": "/api/v1/chat/completions",
             "provider": "openai"},
        ],
        # An operator's own (an internal gateway, another provider), metered the same way.
        "llm_apis_extra": [],
        "llm_prices": PRICES,
        "llm_prices_taken_on": "2025-11-01",
        # A model the table lacks is charged at this rate and flagged in its record.
        "llm_unknown_model_price": {"input": "15", "output": "75", "cache_read": "1.50",
                                    "cache_write": "18.75"},
        # Share of a worker's daily budget at which the proxy logs a warning.
        "budget_warn_share": "0.8",
        # Per worker, at the proxy: {requests_per_second, burst, max_concurrent}; {} none.
        # Generous: a pip or npm install is a burst of requests.
        "worker_rate_limit": {"requests_per_second": 50, "burst": 200, "max_concurrent": 128},
        "budget_report_calendar": "*-*-* 00:10:00",
    },
    check=check,
    data_tree={"orchestrator": {
        "financial/metered": ("autocode-proxy", "autocode", "750"),
    }},
    runtime_extras={"orchestrator": ("proxy",)},
)


def workers_data() -> dict[str, dict]:
    return {w.name: w.data.dict() for w in inventory.get_group("workers")}


@deploy("Spend reports")
def orchestrator() -> None:
    data = host.data
    venv = runtime.venv_path()
    report = (f"{venv}/bin/autocode-budget report --day yesterday "
              f"--ledger {data.data_root}/{LEDGER} --data-root {data.data_root} "
              f"--timezone {data.timezone}")
    systemd_unit(name="Unit autocode-budget-report.service",
                 unit="autocode-budget-report.service", running=False, enabled=False,
                 batch=REPORT_UNITS,
                 text=render("metering/autocode-budget-report.service.j2", command=report,
                             data_root=data.data_root))
    systemd_unit(name="Unit autocode-budget-report.timer", unit="autocode-budget-report.timer",
                 batch=REPORT_UNITS,
                 text=render("metering/autocode-budget-report.timer.j2",
                             calendar=data.budget_report_calendar))


def worker() -> None:
    return None
