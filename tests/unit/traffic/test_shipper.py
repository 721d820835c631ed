"""Shipper against Elasticsearch: each test runs on the double and, when configured, for real."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from autocode.traffic import shipper as shipper_module
from autocode.traffic.shipper import Shipper
from autocode.traffic.spool import Checkpoint, list_segments
from testing.traffic import fake_record, make_config, write_segment

pytestmark = pytest.mark.timeout(60)


def spool_records(spool_dir, count, per_segment):
    records = [fake_record(n) for n in range(count)]
    for start in range(0, count, per_segment):
        write_segment(spool_dir, start // per_segment + 1, records[start:start + per_segment])
    return records


def config_for(tmp_path, backend, **overrides):
    es = {**backend.es_settings(), **overrides.pop("elasticsearch", {})}
    return make_config(tmp_path / "spool", elasticsearch=es, **overrides)


async def drain(config):
    shipper = Shipper(config)
    try:
        await shipper.drain()
    finally:
        await shipper.close()
    return shipper


def assert_exactly_once(backend, records):
    ids = backend.ids()
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    assert not duplicates
    assert sorted(ids) == sorted(r["record_id"] for r in records)


def test_shipper_delivers_every_record_once_and_retires_segments(tmp_path, es_backend):
    config = config_for(tmp_path, es_backend, elasticsearch={"batch_size": 100})
    records = spool_records(config.spool_dir, 450, per_segment=150)

    shipper = asyncio.run(drain(config))

    assert_exactly_once(es_backend, records)
    checkpoint = Checkpoint.load(config.checkpoint_path)
    assert (checkpoint.segment, checkpoint.shipped_total) == (3, 450)
    # Only the newest segment (the one a writer could still append to) is left.
    assert [seq for seq, _ in list_segments(config.spool_dir)] == [3]
    assert shipper.requests_sent == 6  # batches never span segments: 100+50 per segment
    assert not config.dead_letter_path.exists()


def test_shipper_keeps_shipped_segments_when_asked(tmp_path, es_backend):
    config = config_for(tmp_path, es_backend, keep_shipped_segments=True)
    spool_records(config.spool_dir, 20, per_segment=10)
    asyncio.run(drain(config))
    assert sorted(p.name for p in config.shipped_dir.iterdir()) == ["segment-000000000001.jsonl"]


def test_shipper_survives_outage_loses_nothing(tmp_path, es_backend):
    """Elasticsearch refuses connections for many attempts (an 'hour' in fast backoff)."""
    config = config_for(tmp_path, es_backend, elasticsearch={"batch_size": 50})
    records = spool_records(config.spool_dir, 200, per_segment=100)

    async def scenario():
        es_backend.server.down()
        shipper = Shipper(config)
        stop = asyncio.Event()
        task = asyncio.create_task(shipper.run(stop))
        for _ in range(2000):  # bounded wait for 30 failed attempts
            if shipper.requests_sent >= 30:
                break
            await asyncio.sleep(0.005)
        assert Checkpoint.load(config.checkpoint_path).shipped_total == 0
        es_backend.server.up()
        for _ in range(2000):
            if shipper.checkpoint.shipped_total == len(records):
                break
            await asyncio.sleep(0.005)
        stop.set()
        await task
        await shipper.close()
        return shipper

    shipper = asyncio.run(scenario())
    assert shipper.requests_sent >= 30 + 4
    assert_exactly_once(es_backend, records)


def test_shipper_retries_429_5xx_and_lost_acks_without_duplicates(tmp_path, es_backend):
    config = config_for(tmp_path, es_backend, elasticsearch={"batch_size": 40})
    records = spool_records(config.spool_dir, 200, per_segment=200)
    es_backend.server.inject("429", "503", "lost_ack", "500", "item_429", "reset", "lost_ack")

    asyncio.run(drain(config))

    assert es_backend.server.faults == []
    assert_exactly_once(es_backend, records)
    # The lost acknowledgements were resent and answered 409: counted as shipped, not stored.
    assert es_backend.server.conflicts >= 40
    assert Checkpoint.load(config.checkpoint_path).shipped_total == 200


def test_shipper_dead_letters_mapping_errors_and_keeps_going(tmp_path, es_backend):
    config = config_for(tmp_path, es_backend)
    good = [fake_record(n) for n in range(30)]
    bad = [fake_record(n, **{"@timestamp": "not-a-date"}) for n in (100, 101)]
    write_segment(config.spool_dir, 1, good[:10] + bad[:1] + good[10:20] + bad[1:] + good[20:])

    asyncio.run(drain(config))

    assert_exactly_once(es_backend, good)
    dead = [json.loads(line) for line in config.dead_letter_path.read_text().splitlines()]
    assert [json.loads(d["raw"])["record_id"] for d in dead] == [r["record_id"] for r in bad]
    assert all(d["error"]["status"] == 400 for d in dead)
    checkpoint = Checkpoint.load(config.checkpoint_path)
    assert (checkpoint.shipped_total, checkpoint.dead_lettered_total) == (30, 2)


def test_shipper_dead_letters_torn_tail_and_garbage_lines(tmp_path, es_backend):
    config = config_for(tmp_path, es_backend)
    first = [fake_record(n) for n in range(5)]
    second = [fake_record(n) for n in range(5, 8)]
    path = write_segment(config.spool_dir, 1, first, tail=b'{"@timestamp": "2024-01-01T00:0')
    path.write_bytes(path.read_bytes().replace(b"\n", b"\nnot json\n", 1))
    write_segment(config.spool_dir, 2, second)

    asyncio.run(drain(config))

    assert_exactly_once(es_backend, first + second)
    lines = config.dead_letter_path.read_text().splitlines()
    reasons = [json.loads(line)["reason"] for line in lines]
    assert reasons == ["not valid JSON", "torn write: incomplete last line of a finished segment"]


def test_shipper_resumes_from_checkpoint_after_restart(tmp_path, es_backend):
    config = config_for(tmp_path, es_backend, elasticsearch={"batch_size": 25})
    records = spool_records(config.spool_dir, 100, per_segment=100)

    async def partial():
        shipper = Shipper(config)
        await shipper.ship_once()
        await shipper.ship_once()
        await shipper.close()

    asyncio.run(partial())
    assert Checkpoint.load(config.checkpoint_path).shipped_total == 50
    more = [fake_record(n) for n in range(100, 110)]
    write_segment(config.spool_dir, 2, more)
    asyncio.run(drain(config))

    assert_exactly_once(es_backend, records + more)
    assert Checkpoint.load(config.checkpoint_path).shipped_total == 110


def test_shipper_resent_checkpointless_batch_is_not_duplicated(tmp_path, es_backend):
    """A crash after Elasticsearch acked but before the checkpoint was saved."""
    config = config_for(tmp_path, es_backend)
    records = spool_records(config.spool_dir, 30, per_segment=30)
    asyncio.run(drain(config))
    config.checkpoint_path.unlink()

    asyncio.run(drain(config))

    assert_exactly_once(es_backend, records)
    assert es_backend.server.conflicts == 30


def test_shipper_backoff_grows_to_the_cap(tmp_path, monkeypatch):
    config = make_config(tmp_path / "spool", elasticsearch={"retry_initial": 1, "retry_max": 8})
    shipper = Shipper(config, client=object())
    delays = []

    async def fake_sleep(delay):
        delays.append(delay)

    monkeypatch.setattr(shipper_module.asyncio, "sleep", fake_sleep)
    for _ in range(6):
        asyncio.run(shipper._backoff("test"))
    caps = [1, 2, 4, 8, 8, 8]
    assert all(cap / 2 <= d <= cap for d, cap in zip(delays, caps, strict=True))


# -- stopping: within 5 s of SIGTERM in every state, checkpoint consistent -----------------

# Backoff long enough that a shipper ignoring the stop would sleep far past the 5 s bound.
SLOW_RETRY = {"retry_initial": 40, "retry_max": 60}
STOP_BOUND_S = 5  # systemd's stop must never reach TimeoutStopSec and SIGKILL


def stop_while(config, condition, timeout=30.0):
    """Run the shipper until `condition(shipper)` holds, set the stop event; returns the
    seconds from stop to return and the shipper."""

    async def scenario():
        shipper = Shipper(config)
        stop = asyncio.Event()
        task = asyncio.create_task(shipper.run(stop))
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition(shipper):
            assert not task.done(), "the shipper ended by itself"
            assert asyncio.get_running_loop().time() < deadline, "condition never held"
            await asyncio.sleep(0.02)
        stopped_at = asyncio.get_running_loop().time()
        stop.set()
        await asyncio.wait_for(task, timeout=60)
        elapsed = asyncio.get_running_loop().time() - stopped_at
        await shipper.close()
        return elapsed, shipper

    return asyncio.run(scenario())


def test_stop_is_prompt_while_elasticsearch_is_down(tmp_path, es_backend):
    config = config_for(tmp_path, es_backend, elasticsearch={"batch_size": 50, **SLOW_RETRY})
    records = spool_records(config.spool_dir, 120, per_segment=60)
    es_backend.server.down()
    elapsed, shipper = stop_while(config, lambda s: s._failures >= 1)
    assert elapsed < STOP_BOUND_S
    assert Checkpoint.load(config.checkpoint_path) == Checkpoint()  # nothing claimed
    es_backend.server.up()
    asyncio.run(drain(config))
    assert_exactly_once(es_backend, records)
    assert Checkpoint.load(config.checkpoint_path).shipped_total == 120


def test_stop_is_prompt_in_a_429_storm(tmp_path, es_backend):
    config = config_for(tmp_path, es_backend, elasticsearch={"batch_size": 50, **SLOW_RETRY})
    records = spool_records(config.spool_dir, 100, per_segment=100)
    es_backend.server.inject(*["429"] * 20)
    elapsed, _ = stop_while(config, lambda s: s._failures >= 1)
    assert elapsed < STOP_BOUND_S
    assert Checkpoint.load(config.checkpoint_path).shipped_total == 0
    es_backend.server.faults.clear()
    asyncio.run(drain(config))
    assert_exactly_once(es_backend, records)


def test_stop_mid_batch_abandons_the_request_and_the_restart_ships_nothing_twice(
        tmp_path, es_backend):
    """A bulk request in flight when the stop comes: abandoned at once; Elasticsearch
    then stores it anyway, and the next start's resend is answered 409, not stored again."""
    config = config_for(tmp_path, es_backend, elasticsearch={"batch_size": 40})
    records = spool_records(config.spool_dir, 100, per_segment=100)
    server = es_backend.server
    server.inject("stall")  # the first batch: 40 documents
    try:
        elapsed, _ = stop_while(config, lambda s: server.stalled.is_set())
    finally:
        server.release()
    assert elapsed < STOP_BOUND_S
    assert Checkpoint.load(config.checkpoint_path).shipped_total == 0
    for _ in range(200):  # the released request is stored a moment later
        if len(es_backend.ids()) >= 40:
            break
        time.sleep(0.05)
    assert len(es_backend.ids()) == 40
    asyncio.run(drain(config))
    assert_exactly_once(es_backend, records)
    assert server.conflicts >= 40
    assert Checkpoint.load(config.checkpoint_path).shipped_total == 100


def test_the_shipper_process_stops_on_sigterm_with_elasticsearch_unreachable(tmp_path):
    """The console script as systemd runs it: SIGTERM while it backs off from an
    Elasticsearch that refuses connections; exit 0, checkpoint untouched."""
    with socket.socket() as probe:  # a local port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spool = tmp_path / "spool"
    spool_records(spool, 20, per_segment=20)
    config = tmp_path / "traffic.yaml"
    config.write_text(yaml.safe_dump({"spool_dir": str(spool), "min_free_bytes": 0,
                                      "elasticsearch": {"url": f"http://127.0.0.1:{port}",
                                                        **SLOW_RETRY}}))
    log = tmp_path / "shipper.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("autocode-traffic-shipper")),
                                 "--config", str(config)], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while "not accepting yet" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
    print(f"\n[shipper stop] SIGTERM to exit with Elasticsearch unreachable: {elapsed:.3f} s")
    assert elapsed < STOP_BOUND_S
    assert "stopped mid-batch" in log.read_text()
    assert not (spool / "checkpoint.json").exists() or Checkpoint.load(
        spool / "checkpoint.json").shipped_total == 0
