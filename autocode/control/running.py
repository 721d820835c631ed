"""Which task each worker runs, from autocode-control to the proxy on the same host.

autocode-control writes `running-tasks.json` (atomically, after every change of a task's
state) under its data folder; the proxy reads it, at most twice a second and only when it
changed, to put the task's id on every record and ledger row of that worker's traffic and
to hold the task's own budget. When the proxy refuses a call for the task's budget it drops
a marker (`over-budget/<task id>`), and the service stops the task as refused_budget at its
worker's next heartbeat. Files, not a socket: both ends are on the orchestrator, either may
restart alone, and the last state survives both.
"""

from __future__ import annotations

import json
import os
import threading
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

RUNNING_FILE = "running-tasks.json"
OVER_BUDGET_DIR = "over-budget"


def write_running(path: Path, running: dict[str, dict[str, Any]]) -> None:
    """`running`: worker -> {"task_id", "budget_usd"}."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"workers": running, "written_at": time.time()}, sort_keys=True))
    tmp.chmod(0o644)  # the proxy runs as another account
    os.replace(tmp, path)


class RunningTasks:
    """The proxy's view of the file: worker -> (task id, its budget in USD)."""

    def __init__(self, path: Path, recheck_s: float = 0.5) -> None:
        self.path = path
        self.recheck_s = recheck_s
        self._lock = threading.Lock()
        self._checked = 0.0
        self._stamp: tuple[int, int] | None = None
        self._tasks: dict[str, tuple[str, Decimal | None]] = {}

    def task_of(self, worker: str) -> tuple[str, Decimal | None] | None:
        now = time.monotonic()
        with self._lock:
            if now - self._checked >= self.recheck_s:
                self._checked = now
                self._reload()
            return self._tasks.get(worker)

    def _reload(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._tasks = None, {}
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            workers = json.loads(self.path.read_text())["workers"]
        except (OSError, ValueError, KeyError, TypeError):
            return  # keep the last good view; the next write replaces it whole
        tasks = {}
        for worker, entry in workers.items():
            try:
                budget = (Decimal(str(entry["budget_usd"]))
                          if entry.get("budget_usd") is not None else None)
            except (InvalidOperation, TypeError):
                budget = None
            tasks[str(worker)] = (str(entry["task_id"]), budget)
        self._stamp, self._tasks = stamp, tasks


def mark_over_budget(folder: Path, task_id: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / task_id).touch()


def is_over_budget(folder: Path, task_id: str) -> bool:
    return (folder / task_id).exists()
