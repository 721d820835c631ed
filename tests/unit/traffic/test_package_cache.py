"""The package cache through the real proxy: a PyPI-style content-addressed artifact is
fetched once, then served from the cache, checked against its digest, and every request
keeps its audit record; a body that is not what its URL names is never cached; index pages
never are; the least recently served go first above the size bound."""

from __future__ import annotations

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
    time.sleep(0.3)
    assert cache.lookup(keys[0]) == bodies[0]  # served: now the most recent
    cache.store(keys[2], bodies[2])
    cache.close()
    assert cache.lookup(keys[1]) is None and cache.lookup(keys[0]) == bodies[0]
    assert cache.size() == 2000
