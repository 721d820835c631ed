"""Background spool writer: the proxy hands records over without ever waiting on disk.

Queue policy (why it never blocks the proxy and never loses a record silently):

- Every flow reserves a slot when its request headers arrive (``try_reserve``), before
  anything is sent upstream. At most ``queue_size`` flows can be in flight or waiting for
  the spool at once. Reservation is a counter under a lock, never a wait.
- If no slot is free, or the spool is unhealthy: with ``fail_closed`` the flow is answered
  503 by the addon, so no egress happens without a guaranteed place for its record. With
  ``fail_closed: false`` the flow goes through; its record is still queued if a slot has
  freed up by the time it ends, otherwise it is dropped, counted and logged as an error.
- The record of a reserved flow is always accepted (the queue itself is unbounded; the
  reservations are what bound it), so a finished flow never fails to enqueue.
- One thread drains the queue in batches of up to ``writer_batch_max`` records (waiting
  ``writer_linger_seconds`` after the first one so a batch gathers what arrives meanwhile),
  appends them to the spool and fsyncs once per batch, then frees their slots. If the write fails
  (disk full, read-only, directory gone), the batch is kept in memory and retried every
  ``writer_retry_seconds`` while the addon fails closed; traffic resumes by itself once a
  write succeeds.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import dataclass

from autocode.control.running import TRAFFIC_DIR, TaskTraffic
from autocode.traffic.config import TrafficConfig
from autocode.traffic.spool import SegmentWriter

log = logging.getLogger("autocode.traffic")

_STOP = object()


@dataclass
class WriterStats:
    records_written: int = 0
    records_dropped: int = 0  # fail-open only: no slot when the flow ended
    batches_written: int = 0
    write_failures: int = 0


def encode_record(record: dict) -> bytes:
    return json.dumps(record, separators=(",", ":"), default=str).encode("ascii") + b"\n"


class BackgroundWriter:
    def __init__(self, config: TrafficConfig) -> None:
        self.config = config
        # What each task's worker contacted (autocode/control/running.py), for its record.
        self.task_traffic = (TaskTraffic(config.running_tasks.parent / TRAFFIC_DIR)
                             if config.running_tasks is not None else None)
        self.stats = WriterStats()
        self.healthy = True
        self.last_error: str | None = None
        self._capacity = config.queue_size
        self._reserved = 0
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._segments = SegmentWriter(
            config.spool_dir, config.segment_max_bytes, config.min_free_bytes
        )
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="autocode-spool-writer", daemon=True)

    # -- called from the proxy's event loop ------------------------------------------------

    def start(self) -> None:
        # Open the first segment now so a broken spool fails closed before the first flow.
        try:
            self._segments.check_health()
        except OSError as exc:
            self._mark_unhealthy(exc)
        self._thread.start()

    def try_reserve(self) -> bool:
        with self._lock:
            if self._reserved >= self._capacity:
                return False
            self._reserved += 1
            return True

    def release(self, count: int = 1) -> None:
        with self._lock:
            self._reserved = max(0, self._reserved - count)

    @property
    def in_flight(self) -> int:
        return self._reserved

    def submit(self, record: dict, reserved: bool) -> bool:
        """Queue a finished flow's record. Returns False only when it had to be dropped."""
        if not reserved and not self.try_reserve():
            if self.config.fail_closed:
                # The flow already went out (no reservation: e.g. it began before this addon
                # loaded), so keeping its record beats a strict bound.
                with self._lock:
                    self._reserved += 1
            else:
                self.stats.records_dropped += 1
                log.error(
                    "traffic record dropped: audit queue full (fail_closed is false); "
                    "%d dropped so far", self.stats.records_dropped,
                )
                return False
        self._queue.put(record)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Flush everything queued, then stop the thread (waits at most ``timeout``)."""
        self._stopping.set()
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # -- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        pending: list[bytes] = []
        stop_seen = False
        retry = self.config.writer_retry_seconds
        linger = self.config.writer_linger_seconds
        while True:
            if not pending:
                if stop_seen:
                    break
                try:
                    item = self._queue.get(timeout=retry)
                except queue.Empty:
                    self._probe()
                    continue
                stop_seen = self._take(item, pending, stop_seen)
                if linger and not stop_seen:
                    # Group commit: one fsync for everything that arrives meanwhile, rather
                    # than one per record (fsync and thread wake-ups cost the proxy CPU).
                    self._stopping.wait(linger)
                while len(pending) < self.config.writer_batch_max:
                    try:
                        stop_seen = self._take(self._queue.get_nowait(), pending, stop_seen)
                    except queue.Empty:
                        break
                if not pending:
                    continue
            try:
                self._segments.write_batch(pending)
            except OSError as exc:
                self.stats.write_failures += 1
                self._mark_unhealthy(exc)
                if self._stopping.wait(retry):
                    self._drain_into(pending)
                    self._final_attempts(pending)
                    return
                continue
            self._mark_written(len(pending))
            pending = []
        if self.task_traffic is not None:
            try:
                self.task_traffic.flush(force=True)
            except OSError:
                log.exception("per-task traffic summary not written")
        self._segments.close()

    def _drain_into(self, pending: list[bytes]) -> None:
        while True:
            try:
                self._take(self._queue.get_nowait(), pending, True)
            except queue.Empty:
                return

    def _take(self, item: object, pending: list[bytes], stop_seen: bool) -> bool:
        if item is _STOP:
            return True
        if self.task_traffic is not None:
            try:
                self.task_traffic.add(item)  # type: ignore[arg-type]
            except Exception:  # a summary must never cost a record
                log.exception("per-task traffic summary failed")
        try:
            pending.append(encode_record(item))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            log.exception("traffic record could not be encoded (bug); record dropped")
            self.release()
        return stop_seen

    def _mark_written(self, count: int) -> None:
        self.stats.records_written += count
        self.stats.batches_written += 1
        self.release(count)
        self._mark_healthy()
        if self.task_traffic is not None:
            try:
                self.task_traffic.flush()
            except OSError:
                log.exception("per-task traffic summary not written")

    def _mark_healthy(self) -> None:
        if not self.healthy:
            self.healthy = True
            self.last_error = None
            log.warning("traffic spool writable again; traffic resumes")

    def _probe(self) -> None:
        try:
            self._segments.check_health()
        except OSError as exc:
            self._mark_unhealthy(exc)
        else:
            self._mark_healthy()

    def _final_attempts(self, pending: list[bytes]) -> None:
        """Shutting down with a broken spool: a few last tries, then say what is lost."""
        for _ in range(3):
            try:
                self._segments.write_batch(pending)
            except OSError:
                continue
            self._mark_written(len(pending))
            self._segments.close()
            return
        log.error(
            "traffic spool still unwritable at shutdown: %d records could not be spooled; "
            "they follow in this log so the audit trail survives", len(pending),
        )
        for line in pending:
            log.error("unspooled traffic record: %s", line.decode("ascii").rstrip())

    def _mark_unhealthy(self, exc: OSError) -> None:
        reason = exc.strerror or str(exc)
        message = f"{reason} ({exc.filename})" if exc.filename else reason
        if self.healthy or message != self.last_error:
            log.error(
                "traffic spool %s cannot be written: %s; %s", self.config.spool_dir, message,
                "new flows get 503 until it recovers" if self.config.fail_closed
                else "fail_closed is false, traffic continues unaudited",
            )
        self.last_error = message
        self.healthy = False
