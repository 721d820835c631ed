"""A cache at the proxy for package artifacts whose URL fixes their content: PyPI's files
(files.pythonhosted.org/packages/<aa>/<bb>/<60 hex>/<file>, the path being the file's
BLAKE2b-256 digest). Coding agents install the same packages again and again; a cached
artifact is served from the orchestrator's disk, checked against its digest before every
serving, and the request still gets its audit record (marked `cache: hit`).

Nothing mutable is cached: index pages and metadata have no digest in their URL and are
always fetched. Entries are written by a background thread (a hook never waits on the
disk for a store) and evicted least recently served first above `max_bytes`.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import threading
from dataclasses import dataclass
from pathlib import Path

# /packages/<2 hex>/<2 hex>/<60 hex>/<file name>: the three parts are the digest.
_PYPI = re.compile(r"^/packages/([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{60})/[^/?#]+$")


@dataclass(frozen=True)
class CacheConfig:
    dir: Path
    max_bytes: int = 5 * 1024**3
    max_object_bytes: int = 64 * 1024**2  # larger ones pass through uncached
    hosts: tuple[str, ...] = ("files.pythonhosted.org",)


def blake2b_256(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=32).hexdigest()


class PackageCache:
    def __init__(self, config: CacheConfig, log):
        self.config = config
        self.log = log
        self.hits = self.stores = 0
        config.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._sizes: dict[Path, int] = {}
        for path in config.dir.glob("*/*"):
            if path.is_file() and not path.name.startswith("."):
                self._sizes[path] = path.stat().st_size
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(maxsize=256)
        self._thread = threading.Thread(target=self._store_loop, name="autocode-cache",
                                        daemon=True)
        self._thread.start()

    def key(self, host: str, path: str) -> str | None:
        """The digest a GET's URL fixes its content to, or None if it is not cacheable."""
        if host.lower().rstrip(".") not in self.config.hosts:
            return None
        match = _PYPI.match(path)
        return "".join(match.groups()) if match else None

    def _path(self, key: str) -> Path:
        return self.config.dir / key[:2] / key

    def lookup(self, key: str) -> bytes | None:
        """The artifact, if cached and still what its digest says; a damaged entry is
        dropped (and fetched again)."""
        path = self._path(key)
        try:
            body = path.read_bytes()
        except OSError:
            return None
        if blake2b_256(body) != key:
            self.log.warning("package cache: %s does not match its digest; dropped", path)
            self._remove(path)
            return None
        os.utime(path)  # least recently served goes first
        self.hits += 1
        return body

    def store(self, key: str, body: bytes) -> None:
        """Hand a fetched artifact to the writer; dropped, never waited for, when it is
        too big or the writer is behind."""
        if len(body) > self.config.max_object_bytes:
            return
        try:
            self._queue.put_nowait((key, body))
        except queue.Full:
            pass

    def _store_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            key, body = item
            try:
                self._write(key, body)
            except OSError:
                self.log.exception("package cache: could not store %s", key)

    def _write(self, key: str, body: bytes) -> None:
        if blake2b_256(body) != key:  # what upstream sent is not what the URL names
            self.log.warning("package cache: a download for %s had another digest; "
                             "not cached", key)
            return
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        staged = path.with_name(f".{key}.part")
        staged.write_bytes(body)
        os.replace(staged, path)
        with self._lock:
            self._sizes[path] = len(body)
        self.stores += 1
        self._evict()

    def _evict(self) -> None:
        with self._lock:
            total = sum(self._sizes.values())
            if total <= self.config.max_bytes:
                return
            by_use = sorted(self._sizes, key=lambda p: _mtime(p))
        for path in by_use:
            if total <= self.config.max_bytes:
                break
            total -= self._sizes.get(path, 0)
            self._remove(path)

    def _remove(self, path: Path) -> None:
        with self._lock:
            self._sizes.pop(path, None)
        path.unlink(missing_ok=True)

    def size(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def parse_cache(p, raw) -> CacheConfig | None:
    """The traffic config's `package_cache` section; `p.add(field, problem, fix)`."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        p.add("package_cache", "must be a mapping", "write {dir: ..., max_bytes: ...}")
        return None
    known = {"dir", "max_bytes", "max_object_bytes", "hosts"}
    for name in sorted(set(raw) - known, key=str):
        p.add(f"package_cache.{name}", "is not a known field",
              f"use one of: {', '.join(sorted(known))}")
    folder = raw.get("dir")
    if not (isinstance(folder, str) and folder.startswith("/")):
        p.add("package_cache.dir", f"must be an absolute folder path, got {folder!r}",
              "write e.g. /mnt/data/autocode/cache/packages")
        return None
    sizes = {}
    defaults = CacheConfig(Path("/"))
    for key in ("max_bytes", "max_object_bytes"):
        value = raw.get(key, getattr(defaults, key))
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            p.add(f"package_cache.{key}", f"must be a whole number of bytes >= 1, got "
                  f"{value!r}", "write e.g. 5368709120")
            value = getattr(defaults, key)
        sizes[key] = value
    hosts = raw.get("hosts", list(defaults.hosts))
    if not (isinstance(hosts, list) and all(isinstance(h, str) and h for h in hosts)):
        p.add("package_cache.hosts", "must be a list of host names",
              "write e.g. [files.pythonhosted.org]")
        hosts = list(defaults.hosts)
    return CacheConfig(Path(folder), hosts=tuple(h.lower() for h in hosts), **sizes)
