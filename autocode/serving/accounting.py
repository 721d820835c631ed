"""What the orchestrator's own models cost the workers that call them: each answer's usage
(as vLLM reports it, the same OpenAI format the proxy meters) priced at an internal rate
per million tokens (0 unless the inventory sets one) and charged to the calling worker in
the orchestrator's served ledger, `financial/served/ledger.sqlite3`, which the daily spend
report (autocode-budget report) reads beside the proxy's metered ledger.

The caller is known by its address, never by what it says: the workers' addresses come
from the inventory, and only they (and the orchestrator itself) can reach the model port.

Writes go to a background thread, so no answer ever waits on SQLite; a write that fails
is retried, in order, and logged.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from autocode.budget import BudgetLedger
from autocode.traffic.metering import MILLION, Usage, UsageTap, estimate

LEDGER = Path("financial/served/ledger.sqlite3")
PROVIDER = "local"
log = logging.getLogger("autocode.serving")


@dataclass(frozen=True)
class Rate:
    """USD per million tokens."""

    input: Decimal = Decimal(0)
    output: Decimal = Decimal(0)


def parse_rates(raw: dict[str, Any] | None) -> tuple[Rate, dict[str, Rate]]:
    """{"default": {"input": "0", "output": "0"}, "models": {name: {...}}} -> rates;
    raises ValueError naming the entry."""
    raw = raw or {}

    def rate(where: str, entry: Any) -> Rate:
        if not isinstance(entry, dict) or set(entry) - {"input", "output"}:
            raise ValueError(f"{where}: give input and output USD per million tokens")
        values = {}
        for key in ("input", "output"):
            try:
                values[key] = Decimal(str(entry.get(key, 0)))
            except ArithmeticError:
                values[key] = Decimal("NaN")
            if not values[key].is_finite() or values[key] < 0:
                raise ValueError(f"{where}.{key}: {entry.get(key)!r} is not an amount >= 0")
        return Rate(**values)

    default = rate("internal_prices.default", raw.get("default", {}))
    models = {name: rate(f"internal_prices.models.{name}", entry)
              for name, entry in (raw.get("models") or {}).items()}
    return default, models


class Accounting:
    """Charges served answers to workers. `workers`: address -> worker name; `agents`:
    worker name -> agent type (the report groups by both)."""

    def __init__(self, ledger_path: str | Path, workers: dict[str, str],
                 agents: dict[str, str], rates: dict[str, Any] | None = None,
                 timezone: str = "UTC"):
        self.workers = dict(workers)
        self.agents = dict(agents)
        self.default_rate, self.rates = parse_rates(rates)
        self.ledger_path = Path(ledger_path)
        self.timezone = timezone
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._write_loop, name="autocode-served",
                                        daemon=True)
        self._thread.start()

    def caller(self, address: str | None) -> str:
        if address in ("127.0.0.1", "::1"):
            return "orchestrator"
        return self.workers.get(address or "", f"unknown:{address}")

    def tap(self, model: str, streaming: bool) -> UsageTap:
        return UsageTap("openai", "text/event-stream" if streaming else "application/json",
                        "", model)

    def cost(self, model: str, usage: Usage) -> Decimal:
        rate = self.rates.get(model, self.default_rate)
        tokens_in = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
        return (tokens_in * rate.input + usage.output_tokens * rate.output) / MILLION

    def charge(self, address: str | None, model: str, tap: UsageTap,
               request_bytes: int) -> dict[str, Any]:
        """Price what `tap` saw and queue the ledger write; returns the charge."""
        usage = estimate(tap.finish(), request_bytes)
        worker = self.caller(address)
        cost = self.cost(model, usage)
        entry = {"key": f"served:{uuid.uuid4().hex}", "worker": worker,
                 "agent": self.agents.get(worker, "unknown"), "cost": cost,
                 "at": datetime.now(UTC),
                 # The served name, not the path vLLM answers with: the report groups by it.
                 "detail": {"provider": PROVIDER, "model": model,
                            "input_tokens": usage.input_tokens,
                            "output_tokens": usage.output_tokens,
                            "cache_read_tokens": usage.cache_read_tokens,
                            "cache_write_tokens": 0, "cost_usd": str(cost),
                            "estimated": usage.estimated, "unknown_model": False}}
        self._queue.put(entry)
        return entry

    def _write_loop(self) -> None:
        ledger = None
        while True:
            entry = self._queue.get()
            if entry is None:
                break
            while True:
                try:
                    if ledger is None:
                        ledger = BudgetLedger(self.ledger_path, self.timezone)
                    ledger.charge(idempotency_key=entry["key"], worker_id=entry["worker"],
                                  agent=entry["agent"], task_id="-", amount_usd=entry["cost"],
                                  source="metered", at=entry["at"], detail=entry["detail"])
                    break
                except Exception:
                    log.exception("served charge %s not yet in %s; retrying", entry["key"],
                                  self.ledger_path)
                    threading.Event().wait(1.0)
        if ledger is not None:
            ledger.close()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)
