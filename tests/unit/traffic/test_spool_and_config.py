"""Spool segments and checkpoint, config validation, redaction rules."""

from __future__ import annotations

import re
import textwrap

import pytest
import yaml

import autocode.traffic as traffic_package
from autocode.traffic.config import TrafficConfigError, load_config, parse_config
from autocode.traffic.redact import Redactor
from autocode.traffic.spool import (
    Checkpoint,
    SegmentWriter,
    SpoolError,
    list_segments,
    read_batch,
)
from autocode.traffic.writer import encode_record
from testing.traffic import fake_record


def lines(n, start=0):
    return [encode_record(fake_record(i)) for i in range(start, start + n)]


def test_segments_rotate_by_size_and_a_restart_never_appends_to_an_old_one(tmp_path):
    writer = SegmentWriter(tmp_path, max_bytes=2048)
    for _ in range(10):
        writer.write_batch(lines(5))
    writer.close()
    first_run = [seq for seq, _ in list_segments(tmp_path)]
    assert len(first_run) > 3
    sizes = {seq: path.stat().st_size for seq, path in list_segments(tmp_path)}

    restarted = SegmentWriter(tmp_path, max_bytes=2048)
    restarted.write_batch(lines(1))
    restarted.close()
    assert [seq for seq, _ in list_segments(tmp_path)] == first_run + [first_run[-1] + 1]
    assert all(path.stat().st_size == sizes[seq] for seq, path in list_segments(tmp_path)
               if seq in sizes)


def test_reader_only_returns_complete_lines_of_the_active_segment(tmp_path):
    writer = SegmentWriter(tmp_path, max_bytes=1 << 20)
    writer.write_batch(lines(3))
    seq, path = list_segments(tmp_path)[0]
    with open(path, "ab") as fh:
        fh.write(b'{"half": ')  # a batch being written right now
    batch = read_batch(tmp_path, 0, 0, max_lines=100, max_bytes=1 << 20)
    assert len(batch.lines) == 3 and batch.torn is None
    again = read_batch(tmp_path, batch.next_segment, batch.next_offset, 100, 1 << 20)
    assert again.lines == [] and (again.next_segment, again.next_offset) == (seq, batch.next_offset)


def test_reader_batches_respect_line_and_byte_limits(tmp_path):
    writer = SegmentWriter(tmp_path, max_bytes=1 << 20)
    writer.write_batch(lines(50))
    assert len(read_batch(tmp_path, 0, 0, max_lines=7, max_bytes=1 << 20).lines) == 7
    small = read_batch(tmp_path, 0, 0, max_lines=100, max_bytes=500)
    assert 0 < len(small.lines) < 50
    huge = read_batch(tmp_path, 0, 0, max_lines=100, max_bytes=10)  # one line > max_bytes
    assert len(huge.lines) == 1


def test_checkpoint_is_replaced_atomically(tmp_path):
    path = tmp_path / "checkpoint.json"
    assert Checkpoint.load(path) == Checkpoint()
    Checkpoint(3, 120, 40, 1).save(path)
    assert Checkpoint.load(path) == Checkpoint(3, 120, 40, 1)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.json"]  # no temp file left


def test_writer_notices_its_segment_vanished(tmp_path):
    spool = tmp_path / "spool"
    writer = SegmentWriter(spool, max_bytes=1 << 20)
    writer.write_batch(lines(1))
    spool.rename(tmp_path / "elsewhere")
    spool.mkdir()
    with pytest.raises(SpoolError, match="vanished"):
        writer.write_batch(lines(1))
    writer.write_batch(lines(1))  # a fresh segment in the new directory
    assert len(list_segments(spool)) == 1


def test_writer_fails_closed_before_the_disk_is_full(tmp_path):
    writer = SegmentWriter(tmp_path, max_bytes=1 << 20, min_free_bytes=1 << 62)
    with pytest.raises(SpoolError, match="min_free_bytes"):
        writer.write_batch(lines(1))


def docstring_example() -> str:
    doc = traffic_package.__doc__
    start = doc.index("    spool_dir:")
    end = doc.index("Record fields")
    return textwrap.dedent(doc[start:end])


def test_the_documented_example_config_is_valid(tmp_path):
    path = tmp_path / "traffic.yaml"
    path.write_text(docstring_example())
    config = load_config(path)
    assert config.workers == {"10.20.0.11": "w1", "10.20.0.12": "w2"}
    assert config.fail_closed is True
    assert config.elasticsearch.index == "autocode-traffic"
    assert config.elasticsearch.api_key_file == "/etc/autocode/es-traffic.key"


def test_defaults_are_fail_closed_and_autocode_traffic():
    config = parse_config({"spool_dir": "/var/spool/t"})
    assert config.fail_closed and config.elasticsearch.index == "autocode-traffic"
    assert config.queue_size == 10_000


@pytest.mark.parametrize(("data", "field"), [
    ({}, "spool_dir"),
    ({"spool_dir": "relative"}, "spool_dir"),
    ({"spool_dir": "/s", "fail_closed": "yes"}, "fail_closed"),
    ({"spool_dir": "/s", "queue_size": 0}, "queue_size"),
    ({"spool_dir": "/s", "workers": {"not-an-ip": "w1"}}, "workers.not-an-ip"),
    ({"spool_dir": "/s", "workers": {"10.0.0.1": ""}}, "workers.10.0.0.1"),
    ({"spool_dir": "/s", "redact_patterns": ["("]}, "redact_patterns"),
    ({"spool_dir": "/s", "redact_headers": "authorization"}, "redact_headers"),
    ({"spool_dir": "/s", "spool_dri": "/x"}, "spool_dri"),
    ({"spool_dir": "/s", "elasticsearch": {"url": "localhost:9200"}}, "elasticsearch.url"),
    ({"spool_dir": "/s", "elasticsearch": {"batch_size": 0}}, "elasticsearch.batch_size"),
    ({"spool_dir": "/s", "elasticsearch": {"index": "Bad Name"}}, "elasticsearch.index"),
    ({"spool_dir": "/s", "elasticsearch": {"api_key_file": "key"}},
     "elasticsearch.api_key_file"),
    ({"spool_dir": "/s", "elasticsearch": {"passwrd": "x"}}, "elasticsearch.passwrd"),
])
def test_invalid_config_names_the_field_and_the_fix(data, field):
    with pytest.raises(TrafficConfigError) as caught:
        parse_config(data)
    message = str(caught.value)
    assert f"'{field}'" in message and "fix:" in message


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(TrafficConfigError, match="cannot read traffic config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"spool_dir": "/s", "queue_size": -1}))
    with pytest.raises(TrafficConfigError, match=re.escape(str(bad))):
        load_config(bad)


@pytest.mark.parametrize(("url", "expected"), [
    ("https://api.example/v1?api_key=abc&q=1", "https://api.example/v1?api_key=[REDACTED]&q=1"),
    ("https://api.example/v1?key=abc", "https://api.example/v1?key=[REDACTED]"),
    ("https://api.example/?X-Amz-Signature=ff&X-Amz-Credential=c&a=b",
     "https://api.example/?X-Amz-Signature=[REDACTED]&X-Amz-Credential=[REDACTED]&a=b"),
    ("https://bob:pw@git.example/repo", "https://bob:[REDACTED]@git.example/repo"),
    ("https://ghp_ABCDEFGHIJKLMNOPQRSTUVWX12@github.com/x", "https://[REDACTED]@github.com/x"),
    ("https://api.example/search?author=me&page=2", "https://api.example/search?author=me&page=2"),
])
def test_url_redaction(url, expected):
    assert Redactor().url(url) == expected


def test_configured_patterns_redact_header_names_and_values():
    redactor = Redactor(extra_headers=["X-Corp"], name_patterns=["^x-internal-"],
                        value_patterns=["acme_[a-z0-9]{8}"])
    assert redactor.header_value("x-corp", "v") == "[REDACTED]"
    assert redactor.header_value("x-internal-id", "v") == "[REDACTED]"
    assert redactor.header_value("user-agent", "tool acme_12345678") == "tool [REDACTED]"
    assert redactor.header_value("accept", "text/html") == "text/html"


def test_every_problem_is_reported_at_once():
    with pytest.raises(TrafficConfigError) as caught:
        parse_config({"spool_dir": "relative", "fail_closed": "yes", "queue_size": 0,
                      "typo": 1, "elasticsearch": {"url": "x", "batch_size": -1}})
    fields = ["spool_dir", "fail_closed", "queue_size", "typo", "elasticsearch.url",
              "elasticsearch.batch_size"]
    assert len(caught.value.problems) == len(fields)
    for field in fields:
        assert f"'{field}'" in str(caught.value), field


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_non_finite_or_negative_seconds_are_refused(value):
    with pytest.raises(TrafficConfigError, match="writer_linger_seconds"):
        parse_config({"spool_dir": "/s", "writer_linger_seconds": value})


def test_file_errors_name_the_file_on_every_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"spool_dir": "/s", "queue_size": -1, "fail_closed": 2}))
    with pytest.raises(TrafficConfigError) as caught:
        load_config(bad)
    lines = str(caught.value).splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{bad}: ") for line in lines)


@pytest.mark.parametrize("name", ["no", "on", "yes", "off", "1.0", "null", "~", "0x1f",
                                  "2026-12-01", "'quoted'", "a: b"])
def test_dump_config_keeps_yaml_lookalike_worker_names_strings(name):
    from autocode.traffic.config import dump_config

    text = dump_config({"spool_dir": "/s", "workers": {"10.0.0.1": name}})
    assert yaml.safe_load(text)["workers"] == {"10.0.0.1": name}
    assert parse_config(yaml.safe_load(text)).workers == {"10.0.0.1": name}


def test_dump_config_refuses_what_the_parser_refuses():
    from autocode.traffic.config import dump_config

    with pytest.raises(TrafficConfigError, match="'workers.10.0.0.1'"):
        dump_config({"spool_dir": "/s", "workers": {"10.0.0.1": False}})


def test_iso_timestamp_matches_datetime_isoformat_to_the_millisecond():
    """The cached-prefix form the record uses is the same text datetime would give."""
    import random
    from datetime import UTC, datetime

    from autocode.traffic.record import iso_timestamp

    rng = random.Random(7)
    samples = [0.0, 1_700_000_000.0, 1_700_000_000.9999, 1_700_000_059.999_5,
               *(rng.uniform(0, 4_102_444_800) for _ in range(2000))]
    for epoch in samples:
        want = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
        assert iso_timestamp(epoch) == want.replace("+00:00", "Z"), epoch


@pytest.mark.parametrize(("url", "setting", "expected"), [
    ("http://127.0.0.1:9200", None, False), ("http://localhost:9200", None, False),
    ("http://[::1]:9200", None, False), ("https://es.example:9200", None, True),
    ("http://10.0.0.5:9200", None, True), ("http://127.0.0.1:9200", True, True),
    ("https://es.example:9200", False, False)])
def test_bulk_bodies_are_compressed_only_for_a_remote_cluster_unless_set(url, setting,
                                                                        expected):
    from autocode.traffic.shipper import compresses

    es = {"url": url, **({} if setting is None else {"compress": setting})}
    assert compresses(parse_config({"spool_dir": "/s", "elasticsearch": es})) is expected


def test_record_ids_are_unique_hex_and_differ_in_a_forked_child():
    import os

    from autocode.traffic.record import new_record_id

    ids = [new_record_id() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids[:100])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out without pytest's cleanup
        os.write(write, new_record_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    parent = new_record_id()
    assert len(child) == 32 and child[:16] != parent[:16] and child not in ids
