"""The package cache through the real proxy: a PyPI-style content-addressed artifact is
fetched once, then served from the cache, checked against its digest, and every request
keeps its audit record; a body that is not what its URL names is never cached; index pages
never are; the least recently served go first above the size bound."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from autocode.traffic.spool import list_segments
from testing.mitmdump import mitmdump

pytestmark = pytest.mark.timeout(90)


def digest_path(body: bytes, name: str) -> str:
    key = hashlib.blake2b(body, digest_size=32).hexdigest()
    return f"/packages/{key[:2]}/{key[2:4]}/{key[4:]}/{name}"


class Upstream:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.asked: list[str] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                upstream.asked.append(self.path)
                body = upstream.files.get(self.path, b"not found")
                self.send_response(200 if self.path in upstream.files else 404)
                self.send_header("Content-Length", str(len(body)))
                for name, value in upstream.headers.get(self.path, {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]


def get(proxy: int, url: str) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy, timeout=20)
    try:
        conn.request("GET", url)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def records(spool: Path) -> list[dict]:
    return [json.loads(line) for _, p in list_segments(spool)
            for line in p.read_text().splitlines()]


def test_fetched_once_then_served_from_cache_with_every_request_recorded(tmp_path):
    upstream = Upstream()
    wheel = b"PK\x03\x04 a wheel " * 1000
    good = digest_path(wheel, "pkg-1.0-py3-none-any.whl")
    forged = digest_path(b"what the index promised", "evil-1.0.tar.gz")
    upstream.files.update({good: wheel, forged: b"something else", "/simple/pkg/": b"<a/>"})
    config = tmp_path / "traffic.yaml"
    config.write_text(yaml.safe_dump({
        "spool_dir": str(tmp_path / "spool"), "workers": {"127.0.0.1": "w1"},
        "min_free_bytes": 0, "package_cache": {"dir": str(tmp_path / "cache"),
                                               "hosts": ["127.0.0.1"]}}))
    base = f"http://127.0.0.1:{upstream.port}"
    with mitmdump(tmp_path, config) as (proxy, _):
        first = get(proxy, base + good)
        deadline = time.monotonic() + 10
        while not list((tmp_path / "cache").glob("*/*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        second = get(proxy, base + good)
        for _ in range(2):
            assert get(proxy, base + forged)[2] == b"something else"
            assert get(proxy, base + "/simple/pkg/")[0] == 200
        time.sleep(0.5)
    assert first[2] == second[2] == wheel and second[1].get("X-Autocode-Cache") == "hit"
    assert upstream.asked.count(good) == 1  # the second came from the cache
    assert upstream.asked.count(forged) == 2 and upstream.asked.count("/simple/pkg/") == 2
    seen = [(r["url"].removeprefix(base), r.get("cache")) for r in records(tmp_path / "spool")]
    assert (good, "miss") in seen and (good, "hit") in seen
    assert len(seen) == 6 and all(c is None for u, c in seen if u == "/simple/pkg/")
    # A damaged entry is dropped, never served.
    (entry,) = (tmp_path / "cache").glob("*/*")
    entry.write_bytes(b"damaged")
    with mitmdump(tmp_path, config) as (proxy, _):
        assert get(proxy, base + good)[2] == wheel
    assert upstream.asked.count(good) == 2


def test_the_least_recently_served_go_first_above_the_bound(tmp_path):
    import logging

    from autocode.traffic.cache import CacheConfig, PackageCache, blake2b_256
    cache = PackageCache(CacheConfig(tmp_path, max_bytes=2500), logging.getLogger("t"))
    bodies = [bytes([n]) * 1000 for n in range(3)]
    keys = [blake2b_256(b) for b in bodies]
    for key, body in zip(keys[:2], bodies[:2], strict=True):
        cache.store(key, body)
        deadline = time.monotonic() + 10  # stored by the cache's thread
        while cache.lookup(key) is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.05)  # the two apart in time: least recently served is well defined
    assert cache.lookup(keys[0]) == bodies[0]  # served: now the most recent
    cache.store(keys[2], bodies[2])
    cache.close()
    assert cache.lookup(keys[1]) is None and cache.lookup(keys[0]) == bodies[0]
    assert cache.size() == 2000


def integrity(body: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(body).digest()).decode()


def test_npm_tarballs_are_cached_under_the_sha512_their_package_document_gives(tmp_path):
    """A tarball is cached only once its registry's own package document (read as it
    passed through, gzipped or not) gave its sha512; a version with only a sha1, a tarball
    the document places on another host, and a body that is not what the document says
    are never cached; the documents themselves are always fetched."""
    upstream = Upstream()
    base = f"http://127.0.0.1:{upstream.port}"
    good, old, forged = b"\x1f\x8b a tarball " * 500, b"\x1f\x8b old " * 100, b"promised"
    paths = {"good": "/left-pad/-/left-pad-1.3.0.tgz", "old": "/left-pad/-/left-pad-0.1.0.tgz",
             "forged": "/@acme/tool/-/tool-2.0.0.tgz", "elsewhere": "/left-pad/-/left-pad-9.tgz"}
    left_pad = {"name": "left-pad", "versions": {
        "1.3.0": {"dist": {"tarball": base + paths["good"], "integrity": integrity(good)}},
        "0.1.0": {"dist": {"tarball": base + paths["old"], "shasum": "0" * 40}},
        "9.0.0": {"dist": {"tarball": "https://mirror.example" + paths["elsewhere"],
                           "integrity": integrity(good)}}}}
    acme = {"name": "@acme/tool", "versions": {"2.0.0": {"dist": {
        "tarball": base + paths["forged"], "integrity": integrity(forged)}}}}
    upstream.files.update({
        "/left-pad": json.dumps(left_pad).encode(),
        "/@acme%2ftool": gzip.compress(json.dumps(acme).encode()),
        paths["good"]: good, paths["old"]: old, paths["forged"]: b"something else",
        paths["elsewhere"]: good})
    upstream.headers["/@acme%2ftool"] = {"Content-Encoding": "gzip",
                                         "Content-Type": "application/json"}
    config = tmp_path / "traffic.yaml"
    config.write_text(yaml.safe_dump({
        "spool_dir": str(tmp_path / "spool"), "workers": {"127.0.0.1": "w1"},
        "min_free_bytes": 0, "package_cache": {"dir": str(tmp_path / "cache"), "hosts": [],
                                               "npm_hosts": ["127.0.0.1"]}}))
    index = tmp_path / "cache" / "learned-digests.jsonl"
    with mitmdump(tmp_path, config) as (proxy, _):
        # Before any document: nothing is known, so nothing is cached.
        assert get(proxy, base + paths["good"])[2] == good
        for document in ("/left-pad", "/@acme%2ftool"):
            assert get(proxy, base + document)[0] == 200
        deadline = time.monotonic() + 10
        while index.read_text().count("\n") < 2 if index.exists() else True:
            assert time.monotonic() < deadline, "the documents were not read"
            time.sleep(0.05)
        first = get(proxy, base + paths["good"])
        deadline = time.monotonic() + 10
        while not list((tmp_path / "cache").glob("*/sha512-*")):
            assert time.monotonic() < deadline, "the tarball was not stored"
            time.sleep(0.05)
        second = get(proxy, base + paths["good"])
        for name in ("old", "forged", "elsewhere"):
            for _ in range(2):
                get(proxy, base + paths[name])
        time.sleep(0.5)
    assert first[2] == second[2] == good and second[1].get("X-Autocode-Cache") == "hit"
    assert upstream.asked.count(paths["good"]) == 2  # before the document, and once after
    for name in ("old", "forged", "elsewhere"):
        assert upstream.asked.count(paths[name]) == 2, name
    known = [json.loads(line)["url"] for line in index.read_text().splitlines()]
    assert sorted(known) == sorted(["127.0.0.1" + paths["good"], "127.0.0.1" + paths["forged"]])
    marks = [(r["url"].removeprefix(base), r.get("cache")) for r in records(tmp_path / "spool")]
    assert marks.count((paths["good"], "hit")) == 1 and (paths["good"], "miss") in marks
    assert all(c != "hit" for u, c in marks if u != paths["good"])  # "miss": fetched
    assert len(marks) == 11  # every request has its record
    # Restarted, the proxy still knows the digest it learned, and serves from the cache.
    with mitmdump(tmp_path, config) as (proxy, _):
        assert get(proxy, base + paths["good"])[1].get("X-Autocode-Cache") == "hit"
    assert upstream.asked.count(paths["good"]) == 2


def test_integrity_strings_and_package_documents_are_read_strictly():
    from autocode.traffic.cache import sha512_of_integrity, tarball_digests

    body = b"x"
    assert sha512_of_integrity(integrity(body) + " sha1-abc=") == hashlib.sha512(body).hexdigest()
    for bad in (None, 5, "sha1-abc=", "sha512-not*base64", "sha512-" + "A" * 10):
        assert sha512_of_integrity(bad) is None, bad
    for bad in (b"not json", b"[]", b'{"versions": []}', b'{"versions": {"1": "x"}}',
                b'{"versions": {"1": {"dist": {"tarball": 5}}}}'):
        assert tarball_digests("r", bad) == {}
    doc = {"versions": {"1": {"dist": {"tarball": "https://r/p/-/p-1.tgz?x=1",
                                       "integrity": integrity(body)}}}}
    assert tarball_digests("r", json.dumps(doc).encode()) == {}  # a query: not a tarball URL


def test_debian_indexes_by_hash_and_pool_packages_under_their_packages_sha256(tmp_path):
    """apt's by-hash index files are content-addressed; a .deb is cached only under the
    SHA256 the Packages index (read as it passed, xz-compressed) gave it; a .deb whose
    body is not that, and the signed InRelease, are fetched every time."""
    import lzma

    upstream = Upstream()
    base = f"http://127.0.0.1:{upstream.port}"
    deb, promised = b"!<arch>\ndebian-binary " * 400, b"what the index promised"
    stanzas = [("hello", "pool/main/h/hello/hello_2.10-3_amd64.deb", deb),
               ("evil", "pool/main/e/evil/evil_1_amd64.deb", promised)]
    packages = "".join(f"Package: {name}\nVersion: 1\nFilename: {path}\nSize: {len(body)}\n"
                       f"SHA256: {hashlib.sha256(body).hexdigest()}\n\n"
                       for name, path, body in stanzas).encode()
    index = lzma.compress(packages)
    by_hash = ("/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/"
               + hashlib.sha256(index).hexdigest())
    hello, evil = "/debian/" + stanzas[0][1], "/debian/" + stanzas[1][1]
    release = "/debian/dists/bookworm/InRelease"
    upstream.files.update({by_hash: index, hello: deb, evil: b"something else",
                           release: b"-----BEGIN PGP SIGNED MESSAGE-----\n"})
    config = tmp_path / "traffic.yaml"
    config.write_text(yaml.safe_dump({
        "spool_dir": str(tmp_path / "spool"), "workers": {"127.0.0.1": "w1"},
        "min_free_bytes": 0, "package_cache": {"dir": str(tmp_path / "cache"), "hosts": [],
                                               "npm_hosts": [], "deb_hosts": ["127.0.0.1"]}}))
    learned = tmp_path / "cache" / "learned-digests.jsonl"
    with mitmdump(tmp_path, config) as (proxy, _):
        assert get(proxy, base + release)[0] == 200
        assert get(proxy, base + by_hash)[2] == index
        deadline = time.monotonic() + 10
        while not (learned.exists() and learned.read_text().count("\n") == 2):
            assert time.monotonic() < deadline, "the Packages index was not read"
            time.sleep(0.05)
        assert get(proxy, base + hello)[2] == deb
        deadline = time.monotonic() + 10
        while len(list((tmp_path / "cache").glob("*/sha256-*"))) < 2:
            assert time.monotonic() < deadline, "the .deb was not stored"
            time.sleep(0.05)
        again = get(proxy, base + hello)
        index_again = get(proxy, base + by_hash)
        for _ in range(2):
            assert get(proxy, base + evil)[2] == b"something else"
        assert get(proxy, base + release)[0] == 200
        time.sleep(0.5)
    assert again[2] == deb and again[1].get("X-Autocode-Cache") == "hit"
    assert index_again[2] == index and index_again[1].get("X-Autocode-Cache") == "hit"
    assert upstream.asked.count(hello) == 1 and upstream.asked.count(by_hash) == 1
    assert upstream.asked.count(evil) == 2 and upstream.asked.count(release) == 2
    marks = [(r["url"].removeprefix(base), r.get("cache")) for r in records(tmp_path / "spool")]
    assert len(marks) == 8 and marks.count((hello, "hit")) == 1


def test_packages_indexes_are_read_strictly():
    from autocode.traffic.cache import deb_digests, decompress_index

    good = "a" * 64
    text = (f"Package: a\nFilename: pool/main/a/a_1_all.deb\nSHA256: {good}\n\n"
            "Package: b\nFilename: pool/../../etc/passwd.deb\nSHA256: " + good + "\n\n"
            "Package: c\nFilename: pool/main/c/c_1_all.deb\nSHA256: short\n\n"
            f"Package: d\nSHA256: {good}\nFilename: pool/main/d/d_1_all.deb").encode()
    assert deb_digests("h", "/debian/", text) == {
        "h/debian/pool/main/a/a_1_all.deb": "sha256-" + good,
        "h/debian/pool/main/d/d_1_all.deb": "sha256-" + good}  # the last, without its blank
    assert deb_digests("h", "/", b"Origin: Debian\nSuite: bookworm\n") == {}  # a Release
    assert decompress_index(b"\xfd7zXZ\x00 broken") is None
    assert decompress_index(gzip.compress(text)) == text


def test_bad_cache_host_lists_are_refused_naming_the_field():
    from autocode.traffic.config import TrafficConfigError, parse_config

    for field in ("hosts", "npm_hosts", "deb_hosts"):
        with pytest.raises(TrafficConfigError, match=f"'package_cache.{field}' must be a list"):
            parse_config({"spool_dir": "/s", "package_cache": {"dir": "/c", field: "x"}})
        with pytest.raises(TrafficConfigError, match=f"'package_cache.{field}' must be a list"):
            parse_config({"spool_dir": "/s", "package_cache": {"dir": "/c", field: [""]}})
