"""The durable local spool: JSON-lines segments, plus the shipper's checkpoint.

Layout of ``spool_dir``::

    segment-000000000001.jsonl   one record per line; only the newest segment grows
    segment-000000000002.jsonl
    checkpoint.json              shipper position {segment, offset}, replaced atomically
    dead-letter.jsonl            records Elasticsearch rejected for good (e.g. mapping errors)

Rules that make this safe without locks between the writer (inside mitmdump) and the
shipper (its own process):

- The writer only appends to the newest segment, each batch fsynced, and never reopens an
  older one: once a newer segment exists, every older segment is final.
- The shipper only consumes complete lines (ending in newline). Bytes without a newline at
  the end of a *final* segment are a torn write from a crash or a failed disk; the shipper
  dead-letters them instead of guessing.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

SEGMENT_RE = re.compile(r"^segment-(\d{12})\.jsonl\Z")


class SpoolError(OSError):
    """The spool cannot be written (reason in the message, no record content)."""


def segment_name(seq: int) -> str:
    return f"segment-{seq:012d}.jsonl"


def list_segments(spool_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for entry in os.scandir(spool_dir):
        match = SEGMENT_RE.match(entry.name)
        if match:
            found.append((int(match.group(1)), Path(entry.path)))
    return sorted(found)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` so a crash leaves either the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def append_durably(path: Path, lines: list[bytes]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        os.write(fd, b"".join(lines))
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Checkpoint:
    """Next unshipped byte: ``offset`` in segment ``segment`` (0 = start of the oldest)."""

    segment: int = 0
    offset: int = 0
    shipped_total: int = 0
    dead_lettered_total: int = 0

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return cls()
        fields = cls.__dataclass_fields__
        return cls(**{k: int(v) for k, v in data.items() if k in fields})

    def save(self, path: Path) -> None:
        write_atomically(path, json.dumps(asdict(self)).encode() + b"\n")


class SegmentWriter:
    """Appends batches of lines to the newest segment; used by one thread only."""

    def __init__(self, spool_dir: Path, max_bytes: int, min_free_bytes: int = 0) -> None:
        self.spool_dir = spool_dir
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self._fd: int | None = None
        self._path: Path | None = None
        self._seq = 0
        self._size = 0

    def open_new_segment(self) -> None:
        self.close()
        if self.spool_dir.exists() and not self.spool_dir.is_dir():
            raise SpoolError(f"{self.spool_dir} exists but is not a directory")
        os.makedirs(self.spool_dir, exist_ok=True)
        highest = max((seq for seq, _ in list_segments(self.spool_dir)), default=0)
        highest = max(highest, Checkpoint.load(self.spool_dir / "checkpoint.json").segment)
        self._seq = max(self._seq, highest) + 1
        path = self.spool_dir / segment_name(self._seq)
        # O_EXCL: never append to a segment a previous writer may have left half-written.
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
        self._path = path
        self._size = 0
        fsync_dir(self.spool_dir)

    def write_batch(self, lines: list[bytes]) -> None:
        """Append and fsync ``lines`` (each ending in newline), or raise OSError."""
        if self._fd is None:
            self.open_new_segment()
        assert self._fd is not None and self._path is not None
        self._check_still_in_place()
        data = b"".join(lines)
        self._check_free_space(len(data))
        try:
            written = 0
            view = memoryview(data)
            while written < len(data):
                written += os.write(self._fd, view[written:])
            os.fsync(self._fd)
        except OSError:
            self._abandon_segment()
            raise
        self._size += len(data)
        if self._size >= self.max_bytes:
            self.close()  # the next batch starts a new segment

    def check_health(self) -> None:
        """Cheap idle probe so a broken spool is noticed before the next record needs it."""
        if self._fd is None:
            self.open_new_segment()
        else:
            self._check_still_in_place()
        self._check_free_space(0)

    def _check_free_space(self, needed: int) -> None:
        # Fail closed while some space is left, rather than on a half-written batch.
        if self.min_free_bytes and self._fd is not None:
            stats = os.fstatvfs(self._fd)
            if stats.f_bavail * stats.f_frsize < self.min_free_bytes + needed:
                raise SpoolError(
                    f"less than min_free_bytes={self.min_free_bytes} free in {self.spool_dir}"
                )

    def _check_still_in_place(self) -> None:
        # Writing to a segment that was deleted or moved away loses records silently.
        assert self._fd is not None and self._path is not None
        try:
            same = os.stat(self._path).st_ino == os.fstat(self._fd).st_ino
        except OSError:
            same = False
        if not same:
            name = self._path.name
            self._abandon_segment()
            raise SpoolError(f"spool segment {name} vanished from {self.spool_dir}")

    def _abandon_segment(self) -> None:
        # Cut a partial write back off, then never touch this segment again.
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = None
        self._path = None


@dataclass
class SpoolLine:
    segment: int
    offset: int
    data: bytes  # without the trailing newline


@dataclass
class SpoolBatch:
    lines: list[SpoolLine] = field(default_factory=list)
    torn: SpoolLine | None = None  # garbage tail of a final segment
    next_segment: int = 0
    next_offset: int = 0


def read_batch(
    spool_dir: Path, segment: int, offset: int, max_lines: int, max_bytes: int
) -> SpoolBatch:
    """Complete lines from position (segment, offset) onward, from one segment at most.

    An exhausted final segment yields an empty batch positioned at the next segment.
    """
    segments = [(seq, path) for seq, path in list_segments(spool_dir) if seq >= segment]
    if not segments:
        return SpoolBatch(next_segment=segment, next_offset=offset)
    seq, path = segments[0]
    if seq != segment:
        offset = 0  # the checkpointed segment is gone (already shipped): start the next one
    is_final = len(segments) > 1
    batch = SpoolBatch(next_segment=seq, next_offset=offset)
    with open(path, "rb") as fh:
        fh.seek(offset)
        chunk = fh.read(max_bytes)
        while chunk and b"\n" not in chunk:
            more = fh.read(max_bytes)  # one record larger than max_bytes: still ship it
            if not more:
                break
            chunk += more
    position = offset
    for raw in chunk.split(b"\n")[:-1]:
        batch.lines.append(SpoolLine(seq, position, raw))
        position += len(raw) + 1
        if len(batch.lines) >= max_lines:
            break
    batch.next_offset = position
    if is_final and not batch.lines:
        # Nothing complete is left in a segment that will never grow again.
        if chunk:
            batch.torn = SpoolLine(seq, offset, chunk)
        batch.next_segment, batch.next_offset = segments[1][0], 0
    return batch
