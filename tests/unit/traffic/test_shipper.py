"""Shipper against Elasticsearch: each test runs on the double and, when configured, for real."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

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
