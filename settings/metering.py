"""The metering component's settings: which hosts are LLM APIs, what their models cost, each
worker's rate limits and the daily report; and the `metering` section of the proxy's
traffic.yaml built from them (autocode/traffic/metering.py reads it)."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from autocode.problems import calendar
from autocode.traffic.metering import (
    parse_apis,
    parse_price,
    parse_prices,
    parse_rate_limit,
    parse_taken_on,
    parse_warn_share,
)
from infra.settings import Settings, checked

LEDGER = "financial/metered/ledger.sqlite3"  # under data_root, the proxy's
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
LLM_APIS = [
    {"host": "api.anthropic.com", "path": "/v1/messages", "provider": "anthropic"},
    {"host": "api.openai.com", "path": "/v1/chat/completions", "provider": "openai"},
    {"host": "api.openai.com", "path": "/v1/responses", "provider": "openai"},
    {"host": "openrouter.ai", "path": "/api/v1/chat/completions", "provider": "openai"},
]


class Metering(Settings):
    llm_apis: Annotated[list, checked(parse_apis)] = LLM_APIS
    """LLM APIs whose calls are metered: a POST to exactly this host and path."""
    llm_apis_extra: Annotated[list, checked(parse_apis)] = []
    """An operator's own (an internal gateway, another provider), metered the same way."""
    llm_prices: Annotated[dict, checked(parse_prices)] = PRICES
    """Model name -> USD per million tokens (input, output, cache_read, cache_write)."""
    llm_prices_taken_on: Annotated[str | date, checked(parse_taken_on)] = "2025-11-01"
    """When the prices above were taken from the providers' pages."""
    llm_unknown_model_price: Annotated[dict, checked(parse_price)] = {
        "input": "15", "output": "75", "cache_read": "1.50", "cache_write": "18.75"}
    """A model the table lacks is charged at this rate and flagged in its record."""
    budget_warn_share: Annotated[str | int | float, checked(parse_warn_share)] = "0.8"
    """Share of a worker's daily budget at which the proxy logs a warning."""
    worker_rate_limit: Annotated[dict, checked(parse_rate_limit)] = {
        "requests_per_second": 50, "burst": 200, "max_concurrent": 128}
    """Per worker, at the proxy: {requests_per_second, burst, max_concurrent}; {} for none.
    Generous: a pip or npm install is a burst of requests."""
    budget_report_calendar: Annotated[str, checked(calendar, "*-*-* 00:10:00")] = \
        "*-*-* 00:10:00"
    """When the daily spend report runs (systemd OnCalendar)."""

    def section(self, data_root: str, timezone: str, workers: dict[str, dict]) -> dict:
        """traffic.yaml's `metering` section; `workers`: each worker's name -> its
        daily_budget_usd and agent_type."""
        return {
            "ledger": f"{data_root}/{LEDGER}",
            "timezone": timezone,
            "apis": [*self.llm_apis, *self.llm_apis_extra],
            "prices": self.llm_prices,
            "prices_taken_on": str(self.llm_prices_taken_on),
            "unknown_model_price": self.llm_unknown_model_price,
            "warn_share": str(self.budget_warn_share),
            "inject_stream_usage": True,
            "rate_limit": dict(self.worker_rate_limit),
            "workers": {name: {"daily_budget_usd": str(w["daily_budget_usd"]),
                               "agent_type": str(w["agent_type"])}
                        for name, w in workers.items()},
        }
