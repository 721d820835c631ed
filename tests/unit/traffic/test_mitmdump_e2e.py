"""End to end: a real mitmdump (regular proxy mode, 127.0.0.1) with the addon loaded, in
front of a real local HTTP server; then the spool shipped to the Elasticsearch double."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from autocode.traffic.config import load_config
from autocode.traffic.shipper import Shipper
from autocode.traffic.spool import list_segments
from testing.elasticsearch_double import ESDouble
from testing.mitmdump import mitmdump, proxied, upstream_server

pytestmark = pytest.mark.timeout(60)

PLANTED = "sk-ant-plantedsecretvalue1234567890"


def write_config(tmp_path: Path, spool_dir: Path, **extra) -> Path:
    path = tmp_path / "traffic.yaml"
    path.write_text(yaml.safe_dump({
        "spool_dir": str(spool_dir), "workers": {"127.0.0.1": "w-local"},
        "writer_retry_seconds": 0.1, "min_free_bytes": 0, **extra}))
    return path


def spooled(*dirs: Path) -> list[dict]:
    return [json.loads(line) for d in dirs if d.is_dir() for _, p in list_segments(d)
            for line in p.read_text().splitlines()]


def wait_until(predicate, limit: float = 10.0, step: float = 0.05):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def test_requests_through_real_mitmdump_are_spooled_redacted_and_shipped(tmp_path):
    spool = tmp_path / "spool"
    double = ESDouble()
    double.start()
    config_path = write_config(tmp_path, spool, elasticsearch={
        "url": double.url, "poll_interval": 0.01, "retry_initial": 0.01})
    with upstream_server() as up, mitmdump(tmp_path, config_path) as (proxy, _):
        base = f"http://127.0.0.1:{up}"
        results = [
            proxied(proxy, "GET", f"{base}/bytes/100",
                    headers={"Authorization": f"Bearer {PLANTED}"}),
            proxied(proxy, "POST", f"{base}/bytes/10", body=b"p" * 1234),
            proxied(proxy, "GET", f"{base}/status/404"),
            proxied(proxy, "GET", f"{base}/bytes/5?api_key={PLANTED}&q=1"),
        ]
        assert [status for status, _ in results] == [200, 200, 404, 200]
        records = wait_until(lambda: len(spooled(spool)) == 4 and spooled(spool))

    assert [(r["method"], r["url"], r["status"], r["request_bytes"], r["response_bytes"])
            for r in records] == [
        ("GET", f"{base}/bytes/100", 200, 0, 100),
        ("POST", f"{base}/bytes/10", 200, 1234, 10),
        ("GET", f"{base}/status/404", 404, 0, 2),
        ("GET", f"{base}/bytes/5?api_key=[REDACTED]&q=1", 200, 0, 5),
    ]
    assert {r["worker_id"] for r in records} == {"w-local"}
    assert records[0]["request_headers"]["authorization"] == "Bearer [REDACTED]"
    assert records[0]["response_headers"]["set-cookie"] == "upstream_session=[REDACTED]"
    raw = "".join(p.read_text() for _, p in list_segments(spool))
    assert PLANTED not in raw and "upstreamsecret" not in raw

    async def ship():
        shipper = Shipper(load_config(config_path))
        await shipper.drain()
        await shipper.close()

    asyncio.run(ship())
    docs = double.docs("autocode-traffic")
    double.stop()
    assert sorted(d["record_id"] for d in docs) == sorted(r["record_id"] for r in records)
    assert PLANTED not in json.dumps(docs)


def _count_until(proxy: int, url: str, wanted: int, tries: int = 100) -> tuple[int, bytes, int]:
    """Send requests until one answers ``wanted``; returns (status, body, 200s seen)."""
    ok = 0
    for _ in range(tries):
        status, body = proxied(proxy, "GET", url)
        if status == wanted:
            return status, body, ok
        ok += status == 200
        time.sleep(0.05)
    return status, body, ok


def test_fail_closed_503_when_spool_dir_replaced_by_a_file_then_recovers(tmp_path):
    spool = tmp_path / "spool"
    config_path = write_config(tmp_path, spool)
    with upstream_server() as up, mitmdump(tmp_path, config_path) as (proxy, log_path):
        url = f"http://127.0.0.1:{up}/bytes/3"
        assert proxied(proxy, "GET", url)[0] == 200
        spool.rename(tmp_path / "spool-moved")
        spool.write_text("a file where the spool directory should be")

        status, body, ok_before = _count_until(proxy, url, 503)
        assert status == 503
        assert b"traffic audit log cannot record it" in body and b"spool unwritable" in body
        assert "cannot be written" in log_path.read_text()

        spool.unlink()
        status, _, _ = _count_until(proxy, url, 200)
        assert status == 200
        assert proxied(proxy, "GET", url)[0] == 200
    # Every request that got through is in the spool (old or new directory); no 503 is.
    assert len(spooled(tmp_path / "spool-moved", spool)) == 1 + ok_before + 2


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "256k"):
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill it needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_disk(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as fh, contextlib.suppress(OSError):
        for _ in range(10_000):  # bounded: 256 KiB tmpfs fills long before
            fh.write(b"\0" * 4096)
    return filler


def test_fail_closed_503_when_spool_disk_is_full_then_recovers(tmp_path):
    with tiny_tmpfs(tmp_path / "tmpfs") as mount:
        spool = mount / "spool"
        config_path = write_config(tmp_path, spool)
        with upstream_server() as up, mitmdump(tmp_path, config_path) as (proxy, log_path):
            url = f"http://127.0.0.1:{up}/bytes/3"
            assert proxied(proxy, "GET", url)[0] == 200
            assert wait_until(lambda: len(spooled(spool)) == 1)
            filler = fill_disk(mount)

            status, body, ok_before = _count_until(proxy, url, 503)
            assert status == 503 and b"No space left on device" in body
            assert "No space left on device" in log_path.read_text()

            filler.unlink()
            status, _, _ = _count_until(proxy, url, 200)
            assert status == 200
        records = spooled(spool)
    assert len(records) == 1 + ok_before + 1
