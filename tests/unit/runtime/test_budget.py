"""The budget ledger: real SQLite files, real concurrent processes."""

from __future__ import annotations

import csv
import json
import multiprocessing
import subprocess
import sys
import time
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from autocode.budget import BudgetLedger, LedgerError, micros_to_usd, usd_to_micros

PROCESSES = 8
CHARGES_EACH = 200

# Each process charges its own 200 keys, then retries a quarter of its own keys and a
# fifth of its neighbour's (as a crashed-and-restarted caller would): retries must not count.
CHARGER = """
import json, sys, time
from pathlib import Path
from autocode.budget import BudgetLedger, micros_to_usd

db, index, count, processes, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \\
    int(sys.argv[4]), Path(sys.argv[5])
ledger = BudgetLedger(db)
while not go.exists():
    time.sleep(0.005)

def charge(owner, j):
    return ledger.charge(idempotency_key=f"p{owner}-c{j}", worker_id=f"w{owner}",
                         agent="claude-code", task_id=f"t{j}",
                         amount_usd=micros_to_usd(1000 * owner + j + 1), source="agent-reported")

recorded = sum(charge(index, j) for j in range(count))
neighbour = (index + 1) % processes
recorded += sum(charge(index, j) for j in range(0, count, 4))
recorded += sum(charge(neighbour, j) for j in range(0, count, 5))
attempts = count + len(range(0, count, 4)) + len(range(0, count, 5))
print(json.dumps({"recorded": recorded, "attempts": attempts}))
"""


def test_concurrent_processes_never_lose_or_double_a_charge(tmp_path, capsys):
    db = tmp_path / "financial" / "transactions" / "ledger.sqlite3"
    BudgetLedger(db).close()  # create the schema once, as the worker does at start
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CHARGER, str(db), str(i),
                               str(CHARGES_EACH), str(PROCESSES), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(PROCESSES)]
    time.sleep(0.5)  # let them all reach the start line
    started = time.monotonic()
    go.touch()
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(json.loads(out))
    elapsed = time.monotonic() - started

    ledger = BudgetLedger(db)
    rows = ledger._db.execute("SELECT COUNT(*), SUM(amount_micros), "
                              "COUNT(DISTINCT idempotency_key) FROM charges").fetchone()
    count, total_micros, distinct_keys = rows
    expected_micros = sum(1000 * i + j + 1 for i in range(PROCESSES) for j in range(CHARGES_EACH))
    attempts = sum(o["attempts"] for o in outputs)
    recorded = sum(o["recorded"] for o in outputs)
    expected = PROCESSES * CHARGES_EACH
    with capsys.disabled():
        print(f"\n[ledger concurrency] processes={PROCESSES} unique charges={expected} "
              f"attempts incl. retries={attempts} recorded rows={count} "
              f"lost={max(0, expected - count)} doubled={max(0, count - expected)} "
              f"sum={micros_to_usd(total_micros)} USD (expected "
              f"{micros_to_usd(expected_micros)}) in {elapsed:.2f}s")
    assert count == distinct_keys == expected == recorded
    assert total_micros == expected_micros
    assert ledger.spent() == micros_to_usd(expected_micros)
    assert ledger._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_retried_charge_is_recorded_once(tmp_path):
    ledger = BudgetLedger(tmp_path / "l.sqlite3")
    args = dict(idempotency_key="w1:t1:run-a", worker_id="w1", agent="aider", task_id="t1",
                amount_usd=Decimal("0.25"), source="agent-reported")
    assert ledger.charge(**args) is True
    assert ledger.charge(**args) is False
    assert ledger.spent() == Decimal("0.25")
    with pytest.raises(LedgerError, match="different amount"):
        ledger.charge(**{**args, "amount_usd": Decimal("0.30")})


@pytest.mark.parametrize("amount, source, message", [
    (Decimal("-1"), "metered", "negative"),
    (Decimal("NaN"), "metered", "finite"),
    (Decimal("1"), "guessed", "source"),
])
def test_bad_charges_are_refused(amount, source, message):
    with pytest.raises(LedgerError, match=message):
        BudgetLedger.in_memory().charge(idempotency_key="k", worker_id="w", agent="a",
                                        task_id="t", amount_usd=amount, source=source)


def test_money_is_exact_and_rounds_up_to_the_micro_dollar():
    assert usd_to_micros("0.1") + usd_to_micros("0.2") == usd_to_micros("0.3")
    assert usd_to_micros(Decimal("0.0000001")) == 1  # never under-count spend
    ledger = BudgetLedger.in_memory()
    for i in range(10):
        ledger.charge(idempotency_key=f"k{i}", worker_id="w", agent="a", task_id="t",
                      amount_usd="0.1", source="metered")
    assert ledger.spent() == Decimal("1")


def test_check_budget_refuses_at_zero_remaining():
    ledger = BudgetLedger.in_memory()
    ledger.charge(idempotency_key="a", worker_id="w1", agent="a", task_id="t",
                  amount_usd="0.999999", source="metered")
    status = ledger.check_budget(Decimal("1"), "w1")
    assert status.allowed and status.remaining_usd == Decimal("0.000001")
    ledger.charge(idempotency_key="b", worker_id="w1", agent="a", task_id="t",
                  amount_usd="0.000001", source="metered")
    status = ledger.check_budget(Decimal("1"), "w1")
    assert status.remaining_usd == 0 and not status.allowed
    ledger.charge(idempotency_key="c", worker_id="w1", agent="a", task_id="t",
                  amount_usd="0.5", source="metered")
    assert not ledger.check_budget(Decimal("1"), "w1").allowed  # overspent: still refused
    assert ledger.check_budget(Decimal("1"), "w2").allowed  # another worker's own budget


def test_daily_windows_follow_the_configured_time_zone(tmp_path):
    db = tmp_path / "l.sqlite3"
    utc, new_york = BudgetLedger(db), BudgetLedger(db, timezone="America/New_York")
    # 03:30 UTC on 10 March is 22:30 on 9 March in New York.
    utc.charge(idempotency_key="late", worker_id="w", agent="a", task_id="t", amount_usd="2",
               source="metered", at=datetime(2024, 3, 10, 3, 30, tzinfo=UTC))
    utc.charge(idempotency_key="noon", worker_id="w", agent="a", task_id="t", amount_usd="3",
               source="metered", at=datetime(2024, 3, 10, 16, 0, tzinfo=UTC))
    assert utc.spent(date(2024, 3, 10)) == Decimal("5")
    assert utc.spent(date(2024, 3, 9)) == 0
    assert new_york.spent(date(2024, 3, 9)) == Decimal("2")
    assert new_york.spent(date(2024, 3, 10)) == Decimal("3")  # a 23-hour DST day


def test_charges_survive_reopening(tmp_path):
    ledger = BudgetLedger.for_data_root(tmp_path)
    ledger.charge(idempotency_key="k", worker_id="w", agent="a", task_id="t",
                  amount_usd="1.23", source="agent-reported")
    ledger.close()
    assert (tmp_path / "financial/transactions/ledger.sqlite3").exists()
    assert BudgetLedger.for_data_root(tmp_path).spent() == Decimal("1.23")


def test_daily_report_json_and_csv(tmp_path):
    ledger = BudgetLedger.in_memory()
    day = datetime(2024, 5, 1, 12, tzinfo=UTC)
    for key, worker, agent, amount, source in (
            ("k1", "w1", "claude-code", "1.10", "agent-reported"),
            ("k2", "w1", "cursor-cli", "0.20", "metered"),
            ("k3", "w2", "aider", "0.05", "agent-reported")):
        ledger.charge(idempotency_key=key, worker_id=worker, agent=agent, task_id="t",
                      amount_usd=amount, source=source, at=day)
    json_path, csv_path = ledger.write_daily_report(tmp_path / "reports", date(2024, 5, 1))

    report = json.loads(json_path.read_text())
    assert json_path.name == "daily-2024-05-01.json"
    assert report["total_usd"] == "1.35" and report["charge_count"] == 3
    assert report["by_worker"] == {"w1": "1.3", "w2": "0.05"}
    assert report["by_source"] == {"agent-reported": "1.15", "metered": "0.2"}
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["idempotency_key"] for r in rows] == ["k1", "k2", "k3"]
    assert rows[1] == {**rows[1], "agent": "cursor-cli", "amount_usd": "0.2",
                       "source": "metered"}



def _open_at_the_barrier(db: str, barrier, results) -> None:
    barrier.wait()
    try:
        ledger = BudgetLedger(db)
        ledger.spent()
        ledger.close()
        results.put("")
    except Exception as exc:  # reported to the parent, which asserts on it
        results.put(repr(exc))


def test_a_new_ledger_opened_by_many_processes_at_once_never_fails(tmp_path):
    """Real processes released by one barrier open a new ledger file together: the first
    switches it to WAL while the others open it, and none may fail with 'database is
    locked' (SQLite answers that at once there, without waiting for the busy timeout)."""
    ctx = multiprocessing.get_context("fork")
    rounds, openers, failures = 40, 16, []
    for n in range(rounds):
        barrier, results = ctx.Barrier(openers), ctx.Queue()
        db = str(tmp_path / f"round{n}" / "ledger.sqlite3")
        procs = [ctx.Process(target=_open_at_the_barrier, args=(db, barrier, results))
                 for _ in range(openers)]
        for proc in procs:
            proc.start()
        failures += [r for r in (results.get(timeout=120) for _ in procs) if r]
        for proc in procs:
            proc.join(timeout=60)
    assert failures == [], f"{len(failures)} of {rounds * openers} opens failed: {failures[:3]}"
