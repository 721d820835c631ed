"""Durable daily spend ledger for coding agents (SQLite, WAL mode).

Layout under the data root (see the seed's "Directory Structure"):

    <data_root>/financial/transactions/ledger.sqlite3   one row per charge
    <data_root>/financial/reports/daily-YYYY-MM-DD.{json,csv}

Money is stored as integer micro-dollars; amounts finer than a micro-dollar are rounded
*up* so the ledger never under-counts spend. Days are windows of local midnight to
midnight in a configurable time zone (UTC by default), computed at query time from UTC
timestamps, so changing the zone never rewrites history.

charge() is one INSERT ... ON CONFLICT(idempotency_key) DO NOTHING statement, which SQLite
runs atomically under its write lock; many processes may charge at once (WAL plus a busy
timeout serialises them) and a retried charge with the same key is recorded once.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from time import monotonic, sleep
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from loguru import logger

MICROS_PER_USD = 1_000_000
SOURCES = ("agent-reported", "metered")
LEDGER_RELATIVE_PATH = Path("financial/transactions/ledger.sqlite3")
REPORTS_RELATIVE_PATH = Path("financial/reports")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    id              INTEGER PRIMARY KEY,
    idempotency_key TEXT    NOT NULL UNIQUE,
    charged_at_us   INTEGER NOT NULL,           -- UTC, microseconds since the epoch
    worker_id       TEXT    NOT NULL,
    agent           TEXT    NOT NULL,
    task_id         TEXT    NOT NULL,
    amount_micros   INTEGER NOT NULL CHECK (amount_micros >= 0),
    source          TEXT    NOT NULL CHECK (source IN ('agent-reported', 'metered')),
    detail          TEXT                        -- JSON: a metered call's model and tokens
);
CREATE INDEX IF NOT EXISTS charges_by_time ON charges (charged_at_us, worker_id);
CREATE INDEX IF NOT EXISTS charges_by_task ON charges (task_id);
"""


class LedgerError(RuntimeError):
    """A charge the ledger cannot accept (bad amount or source, key reused for another sum)."""


def usd_to_micros(amount: Decimal | int | str) -> int:
    value = Decimal(str(amount)) if not isinstance(amount, Decimal) else amount
    if not value.is_finite():
        raise LedgerError(f"amount must be a finite number of USD, got {amount!r}")
    return int((value * MICROS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def micros_to_usd(micros: int) -> Decimal:
    return Decimal(micros) / MICROS_PER_USD


@dataclass(frozen=True)
class BudgetStatus:
    day: date
    daily_budget_usd: Decimal
    spent_usd: Decimal
    remaining_usd: Decimal

    @property
    def allowed(self) -> bool:
        # A new task needs something left: at or below zero means refuse.
        return self.remaining_usd > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "daily_budget_usd": str(self.daily_budget_usd),
            "spent_usd": str(self.spent_usd),
            "remaining_usd": str(self.remaining_usd),
            "allowed": self.allowed,
        }


class BudgetLedger:
    """Spend records for one host. Safe to use from several processes and threads."""

    def __init__(self, db_path: Path | str, timezone: str = "UTC", busy_timeout_s: float = 30.0,
                 read_only: bool = False):
        """`read_only`: another account's ledger, read with no write access to it (the task
        service reads the proxy's): opened as SQLite's read-only URI, its schema as made."""
        self.db_path = str(db_path)
        self.tz = ZoneInfo(timezone)
        self._lock = threading.Lock()
        if read_only:
            self._db = sqlite3.connect(
                f"file:{quote(self.db_path)}?mode=ro", uri=True, timeout=busy_timeout_s,
                isolation_level=None, check_same_thread=False)
            return
        if self.db_path != ":memory:":
            Path(self.db_path).parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: each statement is its own transaction, which is what makes
        # charge() a single atomic step.
        self._db = sqlite3.connect(
            self.db_path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._set_up(busy_timeout_s)

    def _set_up(self, busy_timeout_s: float) -> None:
        """WAL mode and the schema. Switching a new file to WAL takes an exclusive lock
        and SQLite answers "database is locked" at once, without waiting for the busy
        timeout, while another process does the same: retry until that timeout."""
        deadline = monotonic() + busy_timeout_s
        delay = 0.005
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or monotonic() + delay > deadline:
                    raise
                sleep(delay)
                delay = min(delay * 2, 0.2)
        self._db.execute("PRAGMA synchronous=FULL")  # a recorded charge survives power loss
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(charges)")}
        if "detail" not in columns:  # a ledger from before metered calls had details
            self._db.execute("ALTER TABLE charges ADD COLUMN detail TEXT")

    @classmethod
    def for_data_root(cls, data_root: Path | str, timezone: str = "UTC") -> BudgetLedger:
        return cls(Path(data_root) / LEDGER_RELATIVE_PATH, timezone)

    @classmethod
    def in_memory(cls, timezone: str = "UTC") -> BudgetLedger:
        return cls(":memory:", timezone)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writing -------------------------------------------------------------------

    def charge(
        self,
        *,
        idempotency_key: str,
        worker_id: str,
        agent: str,
        task_id: str,
        amount_usd: Decimal | int | str,
        source: str,
        at: datetime | None = None,
        detail: dict[str, Any] | None = None,
    ) -> bool:
        """Record one charge. Returns False if this key was already recorded (a retry).
        `detail`: what was charged for (a metered call's model and tokens), kept as JSON."""
        if source not in SOURCES:
            raise LedgerError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
        micros = usd_to_micros(amount_usd)
        if micros < 0:
            raise LedgerError(f"amount must not be negative, got {amount_usd}")
        if not idempotency_key:
            raise LedgerError("idempotency_key must be a non-empty string")
        when = at or datetime.now(UTC)
        with self._lock:
            inserted = self._db.execute(
                "INSERT INTO charges (idempotency_key, charged_at_us, worker_id, agent, task_id,"
                " amount_micros, source, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (idempotency_key) DO NOTHING",
                (idempotency_key, _to_epoch_us(when), worker_id, agent, task_id, micros, source,
                 json.dumps(detail, sort_keys=True) if detail is not None else None),
            ).rowcount
            if inserted:
                return True
            (existing,) = self._db.execute(
                "SELECT amount_micros FROM charges WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()
        if existing != micros:
            raise LedgerError(
                f"idempotency key {idempotency_key!r} was already used for a different amount"
            )
        return False

    # -- reading -------------------------------------------------------------------

    def today(self) -> date:
        return datetime.now(self.tz).date()

    def _window_us(self, day: date) -> tuple[int, int]:
        start = datetime.combine(day, time.min, tzinfo=self.tz)
        end = datetime.combine(day + timedelta(days=1), time.min, tzinfo=self.tz)
        return _to_epoch_us(start), _to_epoch_us(end)

    def spent(self, day: date | None = None, worker_id: str | None = None) -> Decimal:
        start, end = self._window_us(day or self.today())
        query = "SELECT COALESCE(SUM(amount_micros), 0) FROM charges"
        query += " WHERE charged_at_us >= ? AND charged_at_us < ?"
        params: list[Any] = [start, end]
        if worker_id is not None:
            query += " AND worker_id = ?"
            params.append(worker_id)
        with self._lock:
            (total,) = self._db.execute(query, params).fetchone()
        return micros_to_usd(total)

    def check_budget(
        self, daily_budget_usd: Decimal, worker_id: str | None = None, day: date | None = None
    ) -> BudgetStatus:
        day = day or self.today()
        budget = Decimal(daily_budget_usd)
        spent = self.spent(day, worker_id)
        return BudgetStatus(day, budget, spent, budget - spent)

    def charges(self, day: date | None = None) -> list[dict[str, Any]]:
        start, end = self._window_us(day or self.today())
        with self._lock:
            rows = self._db.execute(
                "SELECT charged_at_us, worker_id, agent, task_id, amount_micros, source,"
                " idempotency_key, detail FROM charges"
                " WHERE charged_at_us >= ? AND charged_at_us < ?"
                " ORDER BY charged_at_us, id",
                (start, end),
            ).fetchall()
        return [self._charge_row(row) for row in rows]

    @staticmethod
    def _charge_row(row: tuple) -> dict[str, Any]:
        at, worker, agent, task, micros, source, key, detail = row
        return {
            "charged_at": _from_epoch_us(at).isoformat(),
            "worker_id": worker,
            "agent": agent,
            "task_id": task,
            "amount_usd": str(micros_to_usd(micros)),
            "source": source,
            "idempotency_key": key,
            **({"detail": json.loads(detail)} if detail else {}),
        }

    def charges_of_task(self, task_id: str) -> list[dict[str, Any]]:
        """Every charge of one task, whatever the day."""
        with self._lock:
            rows = self._db.execute(
                "SELECT charged_at_us, worker_id, agent, task_id, amount_micros, source,"
                " idempotency_key, detail FROM charges WHERE task_id = ? ORDER BY charged_at_us",
                (task_id,)).fetchall()
        return [self._charge_row(row) for row in rows]

    def spent_by_tasks(self, task_ids: list[str]) -> dict[str, Decimal]:
        """Each task's total, whatever the day; a task without charges is absent."""
        if not task_ids:
            return {}
        marks = ", ".join("?" * len(task_ids))
        with self._lock:
            rows = self._db.execute(
                f"SELECT task_id, SUM(amount_micros) FROM charges WHERE task_id IN ({marks})"
                " GROUP BY task_id", task_ids).fetchall()
        return {task: micros_to_usd(total) for task, total in rows}

    def spent_by_task(self, task_id: str) -> Decimal:
        with self._lock:
            row = self._db.execute("SELECT COALESCE(SUM(amount_micros), 0) FROM charges"
                                   " WHERE task_id = ?", (task_id,)).fetchone()
        return micros_to_usd(row[0])

    # -- reports -------------------------------------------------------------------

    def write_daily_report(
        self, reports_dir: Path | str, day: date | None = None
    ) -> tuple[Path, Path]:
        """Write daily-<day>.json (totals and rows) and daily-<day>.csv (rows)."""
        day = day or self.today()
        rows = self.charges(day)
        reports_dir = Path(reports_dir)
        reports_dir.mkdir(parents=True, exist_ok=True)

        def total(key: str) -> dict[str, str]:
            sums: dict[str, Decimal] = {}
            for row in rows:
                sums[row[key]] = sums.get(row[key], Decimal(0)) + Decimal(row["amount_usd"])
            return {name: str(value) for name, value in sorted(sums.items())}

        summary = {
            "day": day.isoformat(),
            "timezone": str(self.tz),
            "total_usd": str(sum((Decimal(r["amount_usd"]) for r in rows), Decimal(0))),
            "charge_count": len(rows),
            "by_worker": total("worker_id"),
            "by_agent": total("agent"),
            "by_source": total("source"),
            "charges": rows,
        }
        json_path = reports_dir / f"daily-{day.isoformat()}.json"
        csv_path = reports_dir / f"daily-{day.isoformat()}.csv"
        _write_atomically(json_path, json.dumps(summary, indent=2) + "\n")
        fields = ["charged_at", "worker_id", "agent", "task_id", "amount_usd", "source",
                  "idempotency_key"]
        tmp = csv_path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, csv_path)
        logger.info("wrote daily spend report for {} ({} charges)", day, len(rows))
        return json_path, csv_path


def _to_epoch_us(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise LedgerError("timestamps must be timezone-aware")
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_epoch_us(value: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
