"""Ship the spool to Elasticsearch in bulk, exactly once per record.

- Each document is sent with ``op_type=create`` and ``_id = record_id`` (assigned in the
  proxy hook), so a batch retried after a lost response is answered 409 for what already
  arrived: 201 and 409 both count as acknowledged.
- The checkpoint moves (atomically, fsynced) only after every document of a batch is
  acknowledged or dead-lettered. A crash at any point re-sends at most one batch, which the
  ``_id``s make harmless.
- Elasticsearch down, 429, 5xx, per-item 429/5xx/403...: retried with capped exponential
  backoff and jitter, forever; nothing is dropped while Elasticsearch is away.
- Per-item 400 (mapping/parsing errors) and lines that are not JSON can never succeed: they
  go to ``dead-letter.jsonl`` (fsynced, counted in the checkpoint, logged), so one bad record
  never blocks the pipeline. A whole-request 400/413 is bisected down to the bad document.
- Segments are deleted (or moved to ``shipped/``) only once the checkpoint is past them.
- Retention (``sweep``, at start and hourly): shipped copies older than
  ``shipped_keep_days`` are deleted, and any of them, oldest first, while the spool's disk
  has less than twice ``min_free_bytes`` free (checked at every idle poll): a copy kept for
  convenience must never make the proxy fail closed. ``dead-letter.jsonl`` is archived as
  ``dead-letter-<day>.jsonl`` once a day has passed with no new entry, and archives older
  than ``dead_letter_keep_days`` are deleted. Nothing not yet shipped is ever touched.
- A stop (SIGTERM) is honoured at once in every state: a backoff sleep or a bulk request
  in flight is abandoned, and the batch in hand with it, the checkpoint left where it was.
  The next start sends that batch again; the ``_id``s make what had arrived a 409.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from elasticsearch import ApiError, AsyncElasticsearch, TransportError, UnsupportedProductError
from loguru import logger

from autocode.traffic.config import TrafficConfig
from autocode.traffic.spool import Checkpoint, SpoolLine, append_durably, list_segments, read_batch

ACKED = frozenset({200, 201, 409})
SWEEP_INTERVAL_S = 3600.0
DAY_S = 86400.0


@dataclass
class Doc:
    line: SpoolLine
    doc_id: str

    @property
    def payload(self) -> bytes:
        return self.line.data


class RetryLater(Exception):
    """The whole request failed in a way worth retrying (logged by the caller)."""


class Stopping(Exception):
    """The stop event was set while a batch was in hand; it is left for the next start."""


def document_id(record: Any, raw: bytes) -> str:
    record_id = record.get("record_id") if isinstance(record, dict) else None
    if isinstance(record_id, str) and record_id:
        return record_id
    # Lines written by something else still get a stable id, so retries stay idempotent.
    return hashlib.sha256(raw).hexdigest()[:40]


def read_api_key(path: str | None) -> str | None:
    if not path:
        return None
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SystemExit(
            f"cannot read elasticsearch.api_key_file {path}: {exc.strerror}; fix: create it "
            "(mode 0600/0640, owned by the shipper's user) with the encoded API key"
        ) from None
    if not key:
        raise SystemExit(f"elasticsearch.api_key_file {path} is empty; fix: write the API key")
    return key


def compresses(config: TrafficConfig) -> bool:
    """Whether bulk bodies are gzipped: as configured, else only for a remote cluster."""
    es = config.elasticsearch
    if es.compress is not None:
        return es.compress
    host = urlsplit(es.url).hostname or ""
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


def make_client(config: TrafficConfig) -> AsyncElasticsearch:
    es = config.elasticsearch
    return AsyncElasticsearch(
        es.url,
        api_key=read_api_key(es.api_key_file),
        ca_certs=es.ca_certs,
        request_timeout=es.request_timeout,
        max_retries=0,  # retries are ours: they must never give up
        retry_on_timeout=False,
        http_compress=compresses(config),
    )


class Shipper:
    def __init__(self, config: TrafficConfig, client: AsyncElasticsearch | None = None) -> None:
        self.config = config
        self.es = config.elasticsearch
        self.client = client or make_client(config)
        self.checkpoint = Checkpoint.load(config.checkpoint_path)
        self._failures = 0  # consecutive, for the backoff
        self._stop: asyncio.Event | None = None
        self.requests_sent = 0
        self._next_sweep = 0.0  # monotonic: the first idle poll sweeps

    async def close(self) -> None:
        await self.client.close()

    # -- main loop --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        self._stop = stop
        logger.info("traffic shipper: {} -> {} index {}", self.config.spool_dir,
                    self.es.url, self.es.index)
        try:
            while not stop.is_set():
                if not await self.ship_once():
                    await asyncio.to_thread(self._housekeeping)
                    try:
                        await asyncio.wait_for(stop.wait(), self.es.poll_interval)
                    except TimeoutError:
                        pass
        except Stopping:
            logger.info("traffic shipper: stopped mid-batch; it is sent again from segment {} "
                        "offset {} at the next start", self.checkpoint.segment,
                        self.checkpoint.offset)
        finally:
            self._stop = None

    async def _unless_stopped(self, awaitable):
        """Await `awaitable`, or abandon it and raise Stopping as soon as the stop event
        is set (an in-flight request is cancelled; what it did is deduplicated later)."""
        if self._stop is None:
            return await awaitable
        if self._stop.is_set():
            raise Stopping
        work = asyncio.ensure_future(awaitable)
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if work.done():
            return work.result()
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await work
        raise Stopping

    async def drain(self) -> None:
        """Ship until nothing complete is left (tests, and a final flush)."""
        while await self.ship_once():
            pass

    async def ship_once(self) -> bool:
        """Ship one batch (or step past one finished segment). False when idle."""
        cp = self.checkpoint
        if not self.config.spool_dir.is_dir():
            return False
        batch = await asyncio.to_thread(
            read_batch, self.config.spool_dir, cp.segment, cp.offset,
            self.es.batch_size, self.es.batch_max_bytes,
        )
        if not batch.lines and batch.torn is None and (
            (batch.next_segment, batch.next_offset) == (cp.segment, cp.offset)
        ):
            return False
        dead = []
        if batch.torn is not None:
            dead.append(self._dead_entry(batch.torn, "torn write: incomplete last line of a "
                                         "finished segment", None))
        docs = []
        for line in batch.lines:
            try:
                record = json.loads(line.data)
            except ValueError:
                dead.append(self._dead_entry(line, "not valid JSON", None))
                continue
            docs.append(Doc(line, document_id(record, line.data)))
        shipped, rejected = await self._ship_docs(docs)
        dead.extend(rejected)
        if dead:
            await asyncio.to_thread(self._write_dead_letters, dead)
        moved_segment = batch.next_segment != cp.segment
        self.checkpoint = Checkpoint(
            batch.next_segment, batch.next_offset,
            cp.shipped_total + shipped, cp.dead_lettered_total + len(dead),
        )
        await asyncio.to_thread(self.checkpoint.save, self.config.checkpoint_path)
        if moved_segment:
            await asyncio.to_thread(self._retire_segments)
        return True

    # -- bulk with retries ------------------------------------------------------------------

    async def _ship_docs(self, docs: list[Doc]) -> tuple[int, list[dict]]:
        """Returns (acknowledged count, dead-letter entries). Retries until all are settled."""
        acked = 0
        dead: list[dict] = []
        todo = docs
        while todo:
            try:
                results = await self._bulk(todo)
            except RetryLater as exc:
                await self._backoff(str(exc))
                continue
            except ApiError as exc:
                if exc.meta.status in (400, 413):
                    # The request as a whole is refused: bisect to isolate the culprit.
                    if len(todo) == 1:
                        dead.append(self._dead_entry(todo[0].line, "whole request rejected",
                                                     _error_summary(exc.meta.status, exc.body)))
                        todo = []
                        continue
                    half = len(todo) // 2
                    for part in (todo[:half], todo[half:]):
                        part_acked, part_dead = await self._ship_docs(part)
                        acked += part_acked
                        dead.extend(part_dead)
                    return acked, dead
                await self._backoff(f"HTTP {exc.meta.status} {_short(exc.body)}")
                continue
            self._failures = 0
            retry = []
            first_refusal = None
            for doc, (status, error) in zip(todo, results, strict=True):
                if status in ACKED:
                    acked += 1
                elif status == 400:
                    dead.append(self._dead_entry(doc.line, "rejected by Elasticsearch",
                                                 _error_summary(status, error)))
                else:
                    retry.append(doc)
                    first_refusal = first_refusal or _error_summary(status, error)
            if retry:
                await self._backoff(f"{len(retry)} of {len(todo)} documents not accepted yet, "
                                    f"first: {_short(first_refusal)}")
            todo = retry
        return acked, dead

    async def _bulk(self, docs: list[Doc]) -> list[tuple[int, Any]]:
        lines = []
        for doc in docs:
            lines.append(json.dumps({"create": {"_index": self.es.index, "_id": doc.doc_id}})
                         .encode())
            lines.append(doc.payload)
        body = b"\n".join(lines) + b"\n"
        self.requests_sent += 1
        try:
            response = await self._unless_stopped(self.client.bulk(operations=body))
        except UnsupportedProductError:
            raise RetryLater("the server at elasticsearch.url is not Elasticsearch") from None
        except ApiError as exc:
            if exc.meta.status == 429 or exc.meta.status >= 500:
                raise RetryLater(f"HTTP {exc.meta.status} {_short(exc.body)}") from None
            raise
        except TransportError as exc:
            raise RetryLater(f"{type(exc).__name__}: {_short(str(exc))}") from None
        items = response.body.get("items") or []
        if len(items) != len(docs):
            raise RetryLater(f"bulk answered {len(items)} items for {len(docs)} documents")
        results = []
        for item in items:
            result = item.get("create") or next(iter(item.values()), {})
            results.append((int(result.get("status", 0)), result.get("error")))
        return results

    async def _backoff(self, reason: str) -> None:
        self._failures += 1
        cap = min(self.es.retry_max, self.es.retry_initial * 2 ** min(self._failures - 1, 30))
        delay = cap / 2 + random.uniform(0, cap / 2)
        logger.warning("traffic shipper: Elasticsearch not accepting yet ({}); retry {} in "
                       "{:.2f}s", reason, self._failures, delay)
        await self._unless_stopped(asyncio.sleep(delay))

    # -- dead letters and segment retirement --------------------------------------------------

    def _dead_entry(self, line: SpoolLine, reason: str, error: Any) -> dict:
        logger.error("traffic shipper: dead-lettering record at segment {} offset {}: {} {}",
                     line.segment, line.offset, reason, _short(error))
        return {
            "dead_lettered_at": time.time(),
            "reason": reason,
            "error": error,
            "segment": line.segment,
            "offset": line.offset,
            "raw": line.data.decode("utf-8", "backslashreplace"),
        }

    def _write_dead_letters(self, entries: list[dict]) -> None:
        append_durably(
            self.config.dead_letter_path,
            [json.dumps(e, default=str).encode() + b"\n" for e in entries],
        )

    def _housekeeping(self) -> None:
        """The idle poll's share of retention: the full sweep hourly, the disk check each
        time (one statvfs)."""
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + SWEEP_INTERVAL_S
            self.sweep()
        elif self.config.keep_shipped_segments:
            self._free_space_for_spool()

    def sweep(self, now: float | None = None) -> dict[str, int]:
        """Apply retention to shipped copies and dead letters; returns what it did."""
        now = time.time() if now is None else now
        config = self.config
        done = {"shipped_expired": 0, "shipped_for_space": 0, "dead_letters_archived": 0,
                "dead_letter_archives_expired": 0}
        if config.shipped_keep_days is not None:
            cutoff = now - config.shipped_keep_days * DAY_S
            for _, path in self._shipped():
                if _mtime(path) < cutoff and _unlink(path):
                    done["shipped_expired"] += 1
        done["shipped_for_space"] = self._free_space_for_spool()
        current = config.dead_letter_path
        with contextlib.suppress(FileNotFoundError):
            last_write = _mtime(current)
            if current.stat().st_size and _utc_day(last_write) < _utc_day(now):
                os.replace(current, self._archive_name(_utc_day(last_write)))
                done["dead_letters_archived"] = 1
        if config.dead_letter_keep_days is not None:
            cutoff = now - config.dead_letter_keep_days * DAY_S
            for path in sorted(config.spool_dir.glob("dead-letter-*.jsonl")):
                if _mtime(path) < cutoff and _unlink(path):
                    done["dead_letter_archives_expired"] += 1
        if any(done.values()):
            logger.info("traffic shipper: retention: {}", done)
        return done

    def _archive_name(self, day: str) -> Path:
        path = self.config.spool_dir / f"dead-letter-{day}.jsonl"
        n = 1
        while path.exists():  # archived that day before (the file came back): keep both
            n += 1
            path = self.config.spool_dir / f"dead-letter-{day}.{n}.jsonl"
        return path

    def _shipped(self) -> list[tuple[int, Path]]:
        shipped = self.config.shipped_dir
        return list_segments(shipped) if shipped.is_dir() else []

    def _free_space_for_spool(self) -> int:
        """Delete shipped copies, oldest first, while the disk is short; returns how many."""
        floor = 2 * self.config.min_free_bytes
        removed = 0
        if not floor:
            return 0
        for _, path in self._shipped():
            try:
                stats = os.statvfs(self.config.spool_dir)
            except OSError:
                return removed
            if stats.f_bavail * stats.f_frsize >= floor:
                break
            if _unlink(path):
                removed += 1
        if removed:
            logger.warning("traffic shipper: disk short under {}: deleted the {} oldest shipped "
                           "copies", self.config.spool_dir, removed)
        return removed

    def _retire_segments(self) -> None:
        for seq, path in list_segments(self.config.spool_dir):
            if seq >= self.checkpoint.segment:
                break
            if self.config.keep_shipped_segments:
                os.makedirs(self.config.shipped_dir, exist_ok=True)
                os.replace(path, self.config.shipped_dir / path.name)
            else:
                path.unlink(missing_ok=True)
        if self.config.keep_shipped_segments:
            self._free_space_for_spool()


def _mtime(path: Path) -> float:
    return path.stat().st_mtime


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _utc_day(epoch: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(epoch))


def _error_summary(status: int, error: Any) -> dict:
    if isinstance(error, dict):
        inner = error.get("error", error)
        if isinstance(inner, dict):
            return {"status": status, "type": inner.get("type"), "reason": inner.get("reason")}
    return {"status": status, "reason": _short(error)}


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."
