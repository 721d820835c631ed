"""The task service reads the proxy's ledger as another account, with read access only:
SQLite's read-only mode on a WAL database whose writer is still open."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from autocode.budget import BudgetLedger

ROOT = Path(__file__).resolve().parents[3]
READ = """
import sys
from autocode.budget import BudgetLedger
ledger = BudgetLedger(sys.argv[1], read_only=True)
print(ledger.spent_by_task("t1"), len(ledger.charges_of_task("t1")))
try:
    ledger.charge(idempotency_key="x", worker_id="w", agent="a", task_id="t1",
                  amount_usd="1", source="metered")
    print("wrote")
except Exception as exc:
    print(type(exc).__name__)
"""


def test_read_only_sees_every_charge_and_writes_nothing(tmp_path):
    path = tmp_path / "ledger.sqlite3"
    writer = BudgetLedger(path)
    for n in range(3):
        writer.charge(idempotency_key=f"k{n}", worker_id="w1", agent="aider", task_id="t1",
                      amount_usd="0.000123", source="metered")
    reader = BudgetLedger(path, read_only=True)
    assert reader.spent_by_task("t1") == Decimal("0.000369")
    with pytest.raises(Exception, match="readonly"):
        reader.charge(idempotency_key="x", worker_id="w1", agent="a", task_id="t1",
                      amount_usd="1", source="metered")
    writer.charge(idempotency_key="late", worker_id="w1", agent="aider", task_id="t1",
                  amount_usd="1", source="metered")
    assert reader.spent_by_task("t1") == Decimal("1.000369")  # sees the writer's new rows
    reader.close()
    writer.close()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root to read as another account")
def test_another_account_with_group_read_only_reads_it(open_tree):
    """As deployed: files 0640 and their folder 0750 to a group the reader is in, the
    writer still holding the database open (its -wal and -shm beside it)."""
    folder = open_tree / "metered"
    folder.mkdir()
    path = folder / "ledger.sqlite3"
    writer = BudgetLedger(path)
    writer.charge(idempotency_key="k", worker_id="w1", agent="aider", task_id="t1",
                  amount_usd="0.5", source="metered")
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            sys.executable, "-c", "import autocode.budget"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip("this checkout's interpreter is not readable by another account")
    for item in (folder, *folder.iterdir()):
        os.chown(item, 0, 65534)
        item.chmod(0o750 if item.is_dir() else 0o640)
    run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          sys.executable, "-c", READ, str(path)], capture_output=True,
                         text=True, cwd="/", env={**os.environ, "PYTHONPATH": str(ROOT)})
    writer.close()
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0.5", "1", "OperationalError"], run.stdout
