"""The orchestrator's task store: one SQLite database, one row per task, one writer.

Lifecycle (every transition is checked here, whoever asks):

    queued -> claimed -> running -> succeeded | failed | cancelled | interrupted | refused_budget
    queued -> cancelled                       (cancelled before any worker took it)
    claimed | running -> interrupted          (its worker's lease ran out)

A worker claims the oldest queued task it may run: one pinned to it, else one for its agent
type; never a second while it holds one. It holds a lease and renews it by heartbeat; a
lease that runs out marks the task interrupted, and nothing is ever re-run by itself (the
agent may have changed the tree and spent money): `retry` makes a new task with the same
spec. A cancel of a running task is a request the worker sees at its next heartbeat; the
worker kills the agent and reports `cancelled`.

WAL journal, `synchronous=FULL` (a submitted task survives a power cut once its id was
answered), and one lock around every write: SQLite allows one writer at a time anyway, and a
lock turns contention into a queue instead of `database is locked`.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QUEUED, CLAIMED, RUNNING = "queued", "claimed", "running"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
INTERRUPTED, REFUSED_BUDGET = "interrupted", "refused_budget"
ACTIVE = (CLAIMED, RUNNING)
ENDED = (SUCCEEDED, FAILED, CANCELLED, INTERRUPTED, REFUSED_BUDGET)
STATES = (QUEUED, *ACTIVE, *ENDED)
# What a worker may report as the end of its task: the worker's own result statuses, its
# timed_out folded into failed (the reason says so).
WORKER_ENDINGS = (SUCCEEDED, FAILED, CANCELLED, INTERRUPTED, REFUSED_BUDGET, "timed_out")

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order: the queue's order
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    agent_type TEXT NOT NULL,
    pinned_worker TEXT,
    worker TEXT,
    spec TEXT NOT NULL,                     -- JSON, as submitted (after validation)
    queued_at REAL NOT NULL,
    claimed_at REAL,
    started_at REAL,
    ended_at REAL,
    lease_expires_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    retry_of TEXT,
    result TEXT                             -- JSON: what the worker reported at the end
);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, seq);
CREATE TABLE IF NOT EXISTS task_logs (
    task_id TEXT NOT NULL,
    start INTEGER NOT NULL,                 -- byte offset of this chunk in the task's log
    data BLOB NOT NULL,
    PRIMARY KEY (task_id, start)
);
"""


class TaskNotFound(LookupError):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"no task {task_id!r}")
        self.task_id = task_id


class TransitionRefused(ValueError):
    """The task is not in a state that allows what was asked (e.g. cancel an ended task)."""


class LogFull(ValueError):
    """A task's live log would pass the service's bound."""


class NotYourTask(PermissionError):
    """A worker asked about a task another worker holds, or none holds."""


@dataclass(frozen=True)
class Claim:
    task_id: str
    lease_expires_at: float


def new_task_id(now: float) -> str:
    """Sortable by time at a glance, unguessable enough not to be enumerated: t-YYMMDD-<hex>."""
    return time.strftime("t-%y%m%d-", time.gmtime(now)) + secrets.token_hex(5)


class TaskStore:
    def __init__(self, path: Path | str, *, lease_s: float = 60.0,
                 clock: Callable[[], float] = time.time,
                 on_change: Callable[[dict[str, dict[str, Any]]], None] | None = None) -> None:
        """`on_change`: called after every write with the tasks held now, worker ->
        {"task_id", "budget_usd"} (autocode/control/running.py hands it to the proxy)."""
        self.path = str(path)
        self.on_change = on_change
        self.lease_s = lease_s
        self.clock = clock
        self._lock = threading.Lock()
        # Changes that a long-polling claim may wait for: a new task, a task ended.
        self._changed = threading.Condition(self._lock)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writes, each one transaction under the lock ----------------------------------------

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                value = fn(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._changed.notify_all()
            if self.on_change is not None:
                self.on_change(self._held_now())
            return value

    def _held_now(self) -> dict[str, dict[str, Any]]:
        rows = self._db.execute("SELECT worker, id, spec FROM tasks WHERE status IN (?, ?)",
                                ACTIVE).fetchall()
        return {row["worker"]: {"task_id": row["id"],
                                "budget_usd": json.loads(row["spec"]).get("budget_usd")}
                for row in rows}

    def submit(self, spec: dict[str, Any], *, retry_of: str | None = None) -> dict[str, Any]:
        """Queue a task whose spec the API has validated; returns its record."""
        now = self.clock()
        task_id = new_task_id(now)

        def insert(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO tasks (id, status, agent_type, pinned_worker, spec, queued_at, "
                "retry_of) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (task_id, QUEUED, spec["agent_type"], spec.get("worker"),
                 json.dumps(spec, sort_keys=True), now, retry_of))

        self._write(insert)
        return self.get(task_id)

    def retry(self, task_id: str) -> dict[str, Any]:
        """A new task with the same spec as an ended one; the old record stays as it is."""
        old = self.get(task_id)
        if old["status"] not in ENDED:
            raise TransitionRefused(
                f"task {task_id} is {old['status']}; only an ended task can be retried "
                "(cancel it first to retry it now)")
        return self.submit(old["spec"], retry_of=task_id)

    def cancel(self, task_id: str) -> dict[str, Any]:
        """Queued: cancelled at once. Claimed or running: asked of its worker, which kills the
        agent at its next heartbeat and reports `cancelled`. Ended: refused."""
        now = self.clock()

        def cancel(db: sqlite3.Connection) -> None:
            row = _row(db, task_id)
            if row["status"] == QUEUED:
                db.execute("UPDATE tasks SET status=?, reason=?, ended_at=? WHERE id=?",
                           (CANCELLED, "cancelled before a worker claimed it", now, task_id))
            elif row["status"] in ACTIVE:
                db.execute("UPDATE tasks SET cancel_requested=1 WHERE id=?", (task_id,))
            else:
                raise TransitionRefused(f"task {task_id} has already ended ({row['status']})")

        self._write(cancel)
        return self.get(task_id)

    def claim(self, worker: str, agent_type: str) -> Claim | None:
        """The oldest queued task for this worker, or None. A worker holding a task gets none:
        one task at a time per worker."""
        self.expire_leases()

        def claim(db: sqlite3.Connection) -> Claim | None:
            now = self.clock()  # under the lock: claim times follow the claims' order
            busy = db.execute("SELECT 1 FROM tasks WHERE worker=? AND status IN (?, ?)",
                              (worker, *ACTIVE)).fetchone()
            if busy:
                return None
            row = db.execute(
                "SELECT id FROM tasks WHERE status=? AND (pinned_worker=? OR "
                "(pinned_worker IS NULL AND agent_type=?)) ORDER BY seq LIMIT 1",
                (QUEUED, worker, agent_type)).fetchone()
            if row is None:
                return None
            lease = now + self.lease_s
            db.execute("UPDATE tasks SET status=?, worker=?, claimed_at=?, lease_expires_at=? "
                       "WHERE id=? AND status=?", (CLAIMED, worker, now, lease, row["id"], QUEUED))
            return Claim(row["id"], lease)

        return self._write(claim)

    def wait_for_claim(self, worker: str, agent_type: str, wait_s: float) -> Claim | None:
        """Long poll: claim now, or wait up to `wait_s` for a task to be queued or ended."""
        deadline = time.monotonic() + wait_s
        while True:
            claim = self.claim(worker, agent_type)
            left = deadline - time.monotonic()
            if claim is not None or left <= 0:
                return claim
            with self._changed:
                # Bounded, so a lease that runs out while nobody writes is still noticed.
                self._changed.wait(timeout=min(left, 5.0))

    def start(self, worker: str, task_id: str) -> dict[str, Any]:
        now = self.clock()

        def start(db: sqlite3.Connection) -> None:
            row = _held(db, worker, task_id)
            if row["status"] != CLAIMED:
                raise TransitionRefused(f"task {task_id} is {row['status']}, not claimed")
            db.execute("UPDATE tasks SET status=?, started_at=?, lease_expires_at=? WHERE id=?",
                       (RUNNING, now, now + self.lease_s, task_id))

        self._write(start)
        return self.get(task_id)

    def heartbeat(self, worker: str, task_id: str) -> dict[str, Any]:
        """Renews the lease; answers whether a cancel was asked."""
        now = self.clock()

        def renew(db: sqlite3.Connection) -> dict[str, Any]:
            row = _held(db, worker, task_id)
            lease = now + self.lease_s
            db.execute("UPDATE tasks SET lease_expires_at=? WHERE id=?", (lease, task_id))
            return {"lease_expires_at": lease, "cancel": bool(row["cancel_requested"])}

        return self._write(renew)

    def finish(self, worker: str, task_id: str, status: str, reason: str,
               result: dict[str, Any]) -> dict[str, Any]:
        if status not in WORKER_ENDINGS:
            raise TransitionRefused(f"{status!r} is not an end a worker can report; one of "
                                    f"{', '.join(WORKER_ENDINGS)}")
        if status == "timed_out":
            status, reason = FAILED, reason or "the agent ran past its timeout"
        now = self.clock()

        def finish(db: sqlite3.Connection) -> None:
            _held(db, worker, task_id)
            db.execute("UPDATE tasks SET status=?, reason=?, ended_at=?, lease_expires_at=NULL, "
                       "result=? WHERE id=?",
                       (status, reason, now, json.dumps(result, sort_keys=True), task_id))

        self._write(finish)
        return self.get(task_id)

    def append_log(self, worker: str, task_id: str, start: int, data: bytes,
                   limit: int | None = None) -> int:
        """Appends a chunk of the agent's output at byte `start` and returns the log's length.
        A chunk sent twice (a retried request) is taken once; a gap is refused, and so is
        a log past `limit` bytes."""

        def append(db: sqlite3.Connection) -> int:
            _held(db, worker, task_id)
            length = _log_length(db, task_id)
            if start + len(data) <= length:
                return length  # already have it
            if start != length:
                raise TransitionRefused(f"log chunk starts at {start}; the log holds {length}")
            if limit is not None and length + len(data) > limit:
                raise LogFull(f"the log of task {task_id} would pass {limit} bytes "
                              "(max_log_bytes); the rest stays on the worker")
            db.execute("INSERT INTO task_logs (task_id, start, data) VALUES (?, ?, ?)",
                       (task_id, start, data))
            return length + len(data)

        return self._write(append)

    def expire_leases(self) -> list[str]:
        """Claimed or running tasks whose lease ran out become interrupted."""
        now = self.clock()

        def expire(db: sqlite3.Connection) -> list[str]:
            ids = [r["id"] for r in db.execute(
                "SELECT id FROM tasks WHERE status IN (?, ?) AND lease_expires_at < ?",
                (*ACTIVE, now))]
            for task_id in ids:
                db.execute(
                    "UPDATE tasks SET status=?, reason=?, ended_at=?, lease_expires_at=NULL "
                    "WHERE id=?",
                    (INTERRUPTED, "its worker stopped renewing the lease (down, cut off or "
                     "killed); not re-run: the agent may have changed the tree and spent "
                     "money; retry it to run it again", now, task_id))
            return ids

        return self._write(expire)

    def extend_leases(self) -> int:
        """At startup: the control service was down, not the workers. Every held lease gets
        a full term again, so a running task whose worker kept working can still report."""
        lease = self.clock() + self.lease_s
        return self._write(lambda db: db.execute(
            "UPDATE tasks SET lease_expires_at=? WHERE status IN (?, ?)",
            (lease, *ACTIVE)).rowcount)

    # -- reads --------------------------------------------------------------------------------

    def get(self, task_id: str) -> dict[str, Any]:
        with self._lock:
            return _record(_row(self._db, task_id), self.clock())

    def list(self, *, status: Iterable[str] = (), worker: str | None = None,
             agent_type: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        where, args = [], []
        status = list(status)
        if status:
            where.append(f"status IN ({', '.join('?' * len(status))})")
            args += status
        if worker:
            where.append("worker = ?")
            args.append(worker)
        if agent_type:
            where.append("agent_type = ?")
            args.append(agent_type)
        sql = "SELECT * FROM tasks" + (f" WHERE {' AND '.join(where)}" if where else "")
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY seq DESC LIMIT ?", (*args, limit)).fetchall()
            now = self.clock()
            return [_record(row, now) for row in rows]

    def read_log(self, task_id: str, offset: int = 0,
                 limit: int = 1024 * 1024) -> tuple[bytes, int]:
        """Up to `limit` bytes of the log from `offset`, and the offset to ask from next."""
        with self._lock:
            _row(self._db, task_id)
            chunks = self._db.execute(
                "SELECT start, data FROM task_logs WHERE task_id=? AND start + length(data) > ? "
                "ORDER BY start", (task_id, offset)).fetchall()
        out = bytearray()
        for chunk in chunks:
            out += chunk["data"][max(0, offset - chunk["start"]):]
            if len(out) >= limit:
                break
        data = bytes(out[:limit])
        return data, offset + len(data)

    def held_by(self, worker: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM tasks WHERE worker=? AND status IN (?, ?)",
                                   (worker, *ACTIVE)).fetchone()
            return None if row is None else _record(row, self.clock())


def _row(db: sqlite3.Connection, task_id: str) -> sqlite3.Row:
    row = db.execute("SELECT * FROM tasks WHERE id=?", (task_id,)).fetchone()
    if row is None:
        raise TaskNotFound(task_id)
    return row


def _held(db: sqlite3.Connection, worker: str, task_id: str) -> sqlite3.Row:
    """The task, if `worker` holds it now. Another worker's task and an unknown id answer
    alike, so a worker learns nothing of tasks that are not its own."""
    row = db.execute("SELECT * FROM tasks WHERE id=?", (task_id,)).fetchone()
    if row is None or row["worker"] != worker:
        raise NotYourTask(f"task {task_id!r} is not held by {worker}")
    if row["status"] not in ACTIVE:
        raise TransitionRefused(f"task {task_id} has already ended ({row['status']})"
                                + (f": {row['reason']}" if row["reason"] else ""))
    return row


def _log_length(db: sqlite3.Connection, task_id: str) -> int:
    row = db.execute("SELECT max(start + length(data)) AS n FROM task_logs WHERE task_id=?",
                     (task_id,)).fetchone()
    return row["n"] or 0


def _record(row: sqlite3.Row, now: float) -> dict[str, Any]:
    ended = row["ended_at"]
    return {
        "id": row["id"],
        "status": row["status"],
        "reason": row["reason"],
        "agent_type": row["agent_type"],
        "pinned_worker": row["pinned_worker"],
        "worker": row["worker"],
        "spec": json.loads(row["spec"]),
        "queued_at": row["queued_at"],
        "claimed_at": row["claimed_at"],
        "started_at": row["started_at"],
        "ended_at": ended,
        "age_s": round(now - row["queued_at"], 3),
        "duration_s": (None if row["started_at"] is None
                       else round((ended or now) - row["started_at"], 3)),
        "lease_expires_at": row["lease_expires_at"],
        "cancel_requested": bool(row["cancel_requested"]),
        "retry_of": row["retry_of"],
        "result": None if row["result"] is None else json.loads(row["result"]),
    }
