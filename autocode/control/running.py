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
import re
import threading
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

RUNNING_FILE = "running-tasks.json"
OVER_BUDGET_DIR = "over-budget"
TRAFFIC_DIR = "traffic"  # per task: the hosts it contacted, from the proxy
# store.new_task_id's shape; a file is named by an id only when it has that shape.
TASK_ID = re.compile(r"^t-[0-9]{6}-[0-9a-f]{10}\Z")


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
    if TASK_ID.match(task_id):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / task_id).touch()


def is_over_budget(folder: Path, task_id: str) -> bool:
    return bool(TASK_ID.match(task_id)) and (folder / task_id).exists()


class TaskTraffic:
    """The proxy's per-task summary of what each task's worker contacted: per host,
    requests, bytes each way and refusals with their reasons; written to
    `traffic/<task id>.json` from the spool writer's thread (never a proxy hook), at most
    once a second. A restarted proxy goes on from the file."""

    def __init__(self, folder: Path, flush_s: float = 1.0) -> None:
        self.folder = folder
        self.flush_s = flush_s
        self._tasks: dict[str, dict[str, dict[str, Any]]] = {}
        self._dirty: set[str] = set()
        self._flushed = 0.0

    def add(self, record: dict[str, Any]) -> None:
        task_id = record.get("task_id")
        if not isinstance(task_id, str) or not TASK_ID.match(task_id):
            return
        hosts = self._tasks.get(task_id)
        if hosts is None:
            hosts = self._tasks[task_id] = self._load(task_id)
        host = str(record.get("host") or record.get("sni") or record.get("server_ip") or "?")
        entry = hosts.setdefault(host, {"requests": 0, "bytes_sent": 0, "bytes_received": 0,
                                        "refused": 0, "reasons": {}})
        entry["requests"] += 1
        entry["bytes_sent"] += int(record.get("request_bytes") or 0)
        entry["bytes_received"] += int(record.get("response_bytes") or 0)
        if record.get("verdict") == "blocked":
            entry["refused"] += 1
            reason = str(record.get("reason") or "")[:200]
            entry["reasons"][reason] = entry["reasons"].get(reason, 0) + 1
        self._dirty.add(task_id)

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self._dirty or (not force and now - self._flushed < self.flush_s):
            return
        self._flushed = now
        self.folder.mkdir(parents=True, exist_ok=True)
        for task_id in sorted(self._dirty):
            path = self.folder / f"{task_id}.json"
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps({"task_id": task_id, "hosts": self._tasks[task_id]},
                                      sort_keys=True))
            tmp.chmod(0o644)
            os.replace(tmp, path)
        self._dirty.clear()
        # Tasks long gone need no memory: keep the hundred most recently seen.
        while len(self._tasks) > 100:
            self._tasks.pop(next(iter(self._tasks)))

    def _load(self, task_id: str) -> dict[str, dict[str, Any]]:
        try:
            return json.loads((self.folder / f"{task_id}.json").read_text())["hosts"]
        except (OSError, ValueError, KeyError):
            return {}


def read_task_traffic(folder: Path, task_id: str) -> dict[str, Any]:
    if not TASK_ID.match(task_id):
        return {}
    try:
        return json.loads((folder / f"{task_id}.json").read_text())["hosts"]
    except (OSError, ValueError, KeyError):
        return {}
