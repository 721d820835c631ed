"""A cache at the proxy for package artifacts whose content is fixed by a digest:

- PyPI's files, whose URL is the digest (files.pythonhosted.org/packages/<aa>/<bb>/<60
  hex>/<file>, the path being the file's BLAKE2b-256);
- npm tarballs (registry.npmjs.org/<name>/-/<name>-<version>.tgz), whose digest is in the
  index: each package document (packument) that passes through the proxy is read, in the
  background, for its versions' `dist.tarball` and `dist.integrity` (sha512; a version
  with only a sha1 `shasum` is not cached), and a tarball is cached and served only under
  the sha512 its registry's own document gave it.

- Debian's (and Ubuntu's) archive: index files apt fetches by their digest
  (`.../by-hash/SHA256/<hex>`), and packages under `pool/`, cached under the SHA256 the
  archive's Packages index gave them (each index that passes, xz or gzip, is read in the
  background for its `Filename` and `SHA256` pairs). The InRelease/Release files that
  sign the indexes are never cached; apt checks each index and package against them.

Coding agents install the same packages again and again; a cached artifact is served from
the orchestrator's disk, checked against its digest before every serving, and the request
still gets its audit record (marked `cache: hit`).

Nothing mutable is cached: index pages, package documents, Release files are always
fetched (the indexes are only read as they pass). Entries are written by a background
thread (a hook never waits on the disk for a store) and evicted least recently served
first above `max_bytes`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import queue
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

# /packages/<2 hex>/<2 hex>/<60 hex>/<file name>: the three parts are the digest.
_PYPI = re.compile(r"^/packages/([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{60})/[^/?#]+$")
# /<name>/-/<file>.tgz and /@<scope>/<name>/-/<file>.tgz; no query.
_NPM_TARBALL = re.compile(r"^/(?:@[^/?#]+/)?[^/?#@]+/-/[^/?#]+\.tgz$")
# A package document: /<name> or /@<scope>/<name> (or its %2f form).
_NPM_DOCUMENT = re.compile(r"^/(?:@[^/?#]+(?:/|%2[fF]))?[^/?#@][^/?#]*$")
# Debian's archive: index files fetched by their digest (Acquire-By-Hash), and packages
# under pool/ whose SHA256 the (signed) Packages index gives.
_BY_HASH = re.compile(r"^/[^?#]*/by-hash/SHA256/([0-9a-f]{64})$")
_DEB_POOL = re.compile(r"^/(?:[^?#]*/)?pool/[^?#]+\.u?deb$")
_DEB_DISTS = re.compile(r"^(/(?:[^?#]*/)?)dists/[^?#]+$")
NPM_SHA512 = "sha512-"
SHA256 = "sha256-"
INDEX_FILE = "learned-digests.jsonl"
MAX_INDEX_DOCUMENT = 256 * 1024**2  # a decompressed Packages file is some 50 MB


@dataclass(frozen=True)
class CacheConfig:
    dir: Path
    max_bytes: int = 5 * 1024**3
    max_object_bytes: int = 64 * 1024**2  # larger ones pass through uncached
    hosts: tuple[str, ...] = ("files.pythonhosted.org",)
    npm_hosts: tuple[str, ...] = ("registry.npmjs.org",)
    deb_hosts: tuple[str, ...] = ("deb.debian.org", "security.debian.org",
                                  "archive.ubuntu.com", "security.ubuntu.com")
    max_index_entries: int = 1_000_000  # artifacts whose digest an index gave


def blake2b_256(body: bytes) -> str:
    return hashlib.blake2b(body, digest_size=32).hexdigest()


def matches(key: str, body: bytes) -> bool:
    """Whether `body` is what cache key `key` names: a sha512 for npm's, a sha256 for
    Debian's, else PyPI's BLAKE2b-256."""
    if key.startswith(NPM_SHA512):
        return hashlib.sha512(body).hexdigest() == key[len(NPM_SHA512):]
    if key.startswith(SHA256):
        return hashlib.sha256(body).hexdigest() == key[len(SHA256):]
    return blake2b_256(body) == key


def _hex(key: str) -> str:
    return key.split("-", 1)[1] if key.startswith((NPM_SHA512, SHA256)) else key


def deb_digests(host: str, root: str, text: bytes) -> dict[str, str]:
    """`host + root + Filename` -> cache key (sha256) of every package a Debian Packages
    index lists; anything else (Release, Translation, Contents) yields nothing."""
    if not text.startswith(b"Package: "):
        return {}
    found = {}
    filename = sha256 = None
    for line in [*text.split(b"\n"), b""]:  # the last stanza may lack its blank line
        if line.startswith(b"Filename: "):
            filename = line[10:].strip().decode("utf-8", "replace")
        elif line.startswith(b"SHA256: "):
            sha256 = line[8:].strip().decode("ascii", "replace")
        elif not line:  # the end of a stanza
            if filename and sha256 and re.fullmatch(r"[0-9a-f]{64}", sha256) and \
                    _DEB_POOL.match("/" + filename) and ".." not in filename:
                found[host + root + filename] = SHA256 + sha256
            filename = sha256 = None
    return found


def decompress_index(raw: bytes) -> bytes | None:
    """An index file as fetched (xz, gzip, or plain), decompressed; None if too big or
    broken."""
    import gzip
    import io
    import lzma
    try:
        if raw.startswith(b"\xfd7zXZ\x00"):
            text = lzma.LZMADecompressor().decompress(raw, MAX_INDEX_DOCUMENT)
        elif raw.startswith(b"\x1f\x8b"):
            text = gzip.GzipFile(fileobj=io.BytesIO(raw)).read(MAX_INDEX_DOCUMENT)
        else:
            text = raw
    except (lzma.LZMAError, OSError, EOFError):
        return None
    return text


def sha512_of_integrity(integrity) -> str | None:
    """The hex sha512 of a Subresource Integrity string ('sha512-<base64> sha1-...')."""
    if not isinstance(integrity, str):
        return None
    for item in integrity.split():
        if item.startswith(NPM_SHA512):
            try:
                raw = base64.b64decode(item[len(NPM_SHA512):], validate=True)
            except (binascii.Error, ValueError):
                return None
            return raw.hex() if len(raw) == 64 else None
    return None


def tarball_digests(host: str, document: bytes) -> dict[str, str]:
    """`host + path` -> cache key (sha512) of every version's tarball a package document lists on
    the same host (a document naming tarballs elsewhere vouches for nothing there)."""
    try:
        doc = json.loads(document)
    except ValueError:
        return {}
    versions = doc.get("versions") if isinstance(doc, dict) else None
    found = {}
    for version in (versions.values() if isinstance(versions, dict) else ()):
        dist = version.get("dist") if isinstance(version, dict) else None
        if not isinstance(dist, dict) or not isinstance(dist.get("tarball"), str):
            continue
        url = urlsplit(dist["tarball"])
        digest = sha512_of_integrity(dist.get("integrity"))
        if digest and (url.hostname or "").lower() == host and not url.query \
                and _NPM_TARBALL.match(url.path):
            found[host + url.path] = NPM_SHA512 + digest
    return found


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
        self._learned: dict[str, str] = self._load_index()  # URL -> key an index gave
        self._queue: queue.Queue[tuple[str, str, bytes] | None] = queue.Queue(maxsize=256)
        self._thread = threading.Thread(target=self._store_loop, name="autocode-cache",
                                        daemon=True)
        self._thread.start()

    def key(self, host: str, path: str) -> str | None:
        """The digest a GET's URL fixes its content to, or None if it is not cacheable."""
        host = host.lower().rstrip(".")
        if host in self.config.hosts:
            match = _PYPI.match(path)
            return "".join(match.groups()) if match else None
        if host in self.config.npm_hosts and _NPM_TARBALL.match(path):
            return self._learned.get(host + path)  # one dict read: safe beside the thread
        if host in self.config.deb_hosts:
            match = _BY_HASH.match(path)
            if match:
                return SHA256 + match.group(1)
            if _DEB_POOL.match(path):
                return self._learned.get(host + path)
        return None

    def is_index_document(self, host: str, path: str) -> bool:
        """Whether a GET is for an index that gives artifacts' digests: an npm package
        document, or a file of a Debian archive's dists/ (a Packages index among them)."""
        host = host.lower().rstrip(".")
        if host in self.config.npm_hosts:
            return bool(_NPM_DOCUMENT.match(path))
        return host in self.config.deb_hosts and bool(_DEB_DISTS.match(path))

    def learn(self, host: str, path: str, raw: bytes, content_encoding: str) -> None:
        """Hand an index to the thread, which reads the digests it gives; dropped, never
        waited for, when the thread is behind."""
        try:
            self._queue.put_nowait(("learn", f"{host.lower().rstrip('.')}|{path}|"
                                    f"{content_encoding}", raw))
        except queue.Full:
            pass

    def _path(self, key: str) -> Path:
        return self.config.dir / _hex(key)[:2] / key

    # -- digests learned from indexes: in memory, appended to one file, read at start -----

    def _load_index(self) -> dict[str, str]:
        known: dict[str, str] = {}
        try:
            with open(self.config.dir / INDEX_FILE, encoding="utf-8") as handle:
                for line in handle:
                    try:
                        entry = json.loads(line)
                        known[entry["url"]] = entry["key"]
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn last line: the rest stands
        except FileNotFoundError:
            pass
        return known

    def _index(self, host: str, path: str, raw: bytes, content_encoding: str) -> None:
        from mitmproxy.net.encoding import decode
        try:
            document = decode(raw, content_encoding) if content_encoding else raw
        except ValueError:
            return
        if host in self.config.npm_hosts:
            found = tarball_digests(host, document)
        else:
            text = decompress_index(document)
            match = _DEB_DISTS.match(path)
            found = deb_digests(host, match.group(1), text) if text and match else {}
        new = {url: key for url, key in found.items() if self._learned.get(url) != key}
        if not new:
            return
        index = self.config.dir / INDEX_FILE
        if len(self._learned) + len(new) > self.config.max_index_entries:
            self._learned = {}  # start over: the indexes that pass will fill it again
            index.unlink(missing_ok=True)
        with open(index, "a", encoding="utf-8") as handle:
            handle.writelines(json.dumps({"url": url, "key": key}) + "\n"
                              for url, key in new.items())
        self._learned.update(new)

    def lookup(self, key: str) -> bytes | None:
        """The artifact, if cached and still what its digest says; a damaged entry is
        dropped (and fetched again)."""
        path = self._path(key)
        try:
            body = path.read_bytes()
        except OSError:
            return None
        if not matches(key, body):
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
            self._queue.put_nowait(("store", key, body))
        except queue.Full:
            pass

    def _store_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            kind, key, body = item
            try:
                if kind == "learn":
                    host, path, encoding = key.split("|", 2)
                    self._index(host, path, body, encoding)
                else:
                    self._write(key, body)
            except OSError:
                self.log.exception("package cache: could not %s %s", kind, key)

    def _write(self, key: str, body: bytes) -> None:
        if not matches(key, body):  # what upstream sent is not what its digest names
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
    known = {"dir", "max_bytes", "max_object_bytes", "hosts", "npm_hosts", "deb_hosts"}
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
    lists = {}
    for key, example in (("hosts", "files.pythonhosted.org"), ("npm_hosts", "registry.npmjs.org"),
                         ("deb_hosts", "deb.debian.org")):
        hosts = raw.get(key, list(getattr(defaults, key)))
        if not (isinstance(hosts, list) and all(isinstance(h, str) and h for h in hosts)):
            p.add(f"package_cache.{key}", "must be a list of host names",
                  f"write e.g. [{example}]")
            hosts = list(getattr(defaults, key))
        lists[key] = tuple(h.lower() for h in hosts)
    return CacheConfig(Path(folder), **lists, **sizes)
