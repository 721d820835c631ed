"""autocode-backup on real files: a ledger in use copied consistently, the unshipped spool,
reports and config; destroyed and restored; a tampered backup refused; retention."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from autocode import backup
from autocode.budget import BudgetLedger
from autocode.control.store import TaskStore

BACKUP = Path(sys.executable).with_name("autocode-backup")


def site(tmp_path: Path) -> tuple[Path, Path, BudgetLedger]:
    data, config = tmp_path / "data", tmp_path / "etc"
    ledger = BudgetLedger(data / "financial/metered/ledger.sqlite3")
    for n in range(50):
        ledger.charge(idempotency_key=f"k{n}", worker_id="w1", agent="aider", task_id="t",
                      amount_usd=Decimal("0.123457"), source="metered")
    spool = data / "logs/traffic/spool"
    (spool / "shipped").mkdir(parents=True)
    (spool / "segment-00000001.jsonl").write_text('{"a": 1}\n')
    (spool / "checkpoint.json").write_text('{"segment": 1}')
    (spool / "shipped" / "segment-00000000.jsonl").write_text("already in Elasticsearch\n")
    (data / "financial/reports").mkdir(parents=True)
    (data / "financial/reports/spend-2026-12-01.json").write_text("{}")
    (config / "pki").mkdir(parents=True)
    (config / "worker.yaml").write_text("worker_id: w1\n")
    (config / "pki" / "platform-ca.key").write_text("KEY")
    return data, config, ledger


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BACKUP), *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def test_back_up_destroy_restore_and_the_ledger_sum_is_back(tmp_path):
    data, config, ledger = site(tmp_path)
    out = run("create", "--data-root", data, "--config-dir", config)
    assert out.returncode == 0, out.stderr
    made = Path(out.stdout.strip())
    assert oct(made.stat().st_mode & 0o777) == "0o700"
    ledger.charge(idempotency_key="after", worker_id="w1", agent="aider", task_id="t",
                  amount_usd="1", source="metered")  # after the backup: not in it
    ledger.close()
    assert not (made / "spool/shipped").exists()
    for path in (data / "financial/metered/ledger.sqlite3", config / "worker.yaml",
                 data / "logs/traffic/spool/segment-00000001.jsonl"):
        path.unlink()
    (config / "pki" / "platform-ca.key").write_text("CHANGED")
    out = run("restore", "--from", "latest", "--data-root", data, "--config-dir", config)
    assert out.returncode == 0, out.stderr
    assert "restored " in out.stdout
    restored = BudgetLedger(data / "financial/metered/ledger.sqlite3")
    assert restored.spent() == Decimal("6.17285") and len(restored.charges()) == 50
    assert (config / "worker.yaml").read_text() == "worker_id: w1\n"
    assert (config / "pki" / "platform-ca.key").read_text() == "KEY"
    assert (data / "logs/traffic/spool/segment-00000001.jsonl").read_text() == '{"a": 1}\n'


def test_a_tampered_backup_restores_nothing(tmp_path):
    data, config, ledger = site(tmp_path)
    ledger.close()
    made = backup.create(data, config, keep=3)
    (made / "config" / "worker.yaml").write_text("worker_id: evil\n")
    (config / "worker.yaml").write_text("current\n")
    out = run("restore", "--from", made, "--data-root", data, "--config-dir", config)
    assert out.returncode == 1 and "changed since the backup" in out.stderr
    assert (config / "worker.yaml").read_text() == "current\n"
    assert run("restore", "--from", tmp_path, "--data-root", data).returncode == 1


def test_retention_keeps_the_newest(tmp_path):
    data, config, ledger = site(tmp_path)
    ledger.close()
    start = datetime(2026, 12, 1, tzinfo=UTC)
    made = [backup.create(data, config, keep=3, now=start + timedelta(hours=n))
            for n in range(5)]
    assert backup.list_backups(data) == made[2:]
    assert run("create", "--data-root", data, "--keep", "0").returncode == 2


def test_the_task_database_and_repositories_come_back(tmp_path):
    """autocode-control's tasks (SQLite in WAL mode, open while backed up) and a bare
    repository with a pushed commit: destroyed, restored, and both as they were."""
    data, config, ledger = site(tmp_path)
    ledger.close()
    (data / "control").mkdir()
    store = TaskStore(data / "control/tasks.sqlite3", lease_s=60)
    task = store.submit({"repo": "app", "prompt": "p", "agent_type": "aider",
                         "budget_usd": "1"})
    bare = data / "control/repos/app.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    src = tmp_path / "src"
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    (src / "a.txt").write_text("a\n")
    git = ["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "a.txt"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    subprocess.run([*git, "push", "-q", str(bare), "HEAD:refs/heads/main"], check=True)
    out = run("create", "--data-root", data, "--config-dir", config)
    assert out.returncode == 0, out.stderr
    store.close()
    shutil.rmtree(data / "control")
    out = run("restore", "--from", "latest", "--data-root", data, "--config-dir", config)
    assert out.returncode == 0, out.stderr
    back = TaskStore(data / "control/tasks.sqlite3", lease_s=60)
    try:
        assert back.get(task["id"])["status"] == "queued"
    finally:
        back.close()
    log = subprocess.run(["git", "-C", str(bare), "log", "--format=%s", "main"],
                         capture_output=True, text=True)
    assert log.returncode == 0 and log.stdout == "a\n", log.stderr
