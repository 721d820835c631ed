"""The shipper's retention sweep on a real spool folder: old and fresh files planted (their
times set with os.utime), exactly the old ones go, and nothing not yet shipped is touched."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from autocode.traffic.config import TrafficConfigError
from autocode.traffic.shipper import Shipper
from autocode.traffic.spool import list_segments, segment_name
from testing.traffic import fake_record, make_config, write_segment

DAY = 86400
NOW = time.time()


def aged(path, days: float):
    os.utime(path, (NOW - days * DAY, NOW - days * DAY))
    return path


def shipper_for(config) -> Shipper:
    # Nothing is shipped here: the client is never used, so no server is needed.
    return Shipper(config)


def planted(path, days: float):
    path.write_text("{}\n")
    return aged(path, days)


def plant(config, shipped_ages, pending=(1,), dead_letter_archives=()):
    config.shipped_dir.mkdir(parents=True)
    for seq, days in enumerate(shipped_ages, start=1):
        planted(config.shipped_dir / segment_name(seq), days)
    for seq in pending:  # segments the checkpoint has not passed: never the sweep's
        write_segment(config.spool_dir, 100 + seq, [fake_record(seq)])
        aged(config.spool_dir / segment_name(100 + seq), 400)
    for day, days in dead_letter_archives:
        planted(config.spool_dir / f"dead-letter-{day}.jsonl", days)


def close(shipper):
    asyncio.run(shipper.close())


def test_old_shipped_copies_and_dead_letter_archives_go_fresh_ones_stay(tmp_path):
    config = make_config(tmp_path / "spool", keep_shipped_segments=True,
                         shipped_keep_days=7, dead_letter_keep_days=90)
    plant(config, shipped_ages=[30, 8, 6.9, 0.1],
          dead_letter_archives=[("2026-01-01", 200), ("2026-08-01", 91), ("2026-10-01", 60)])
    shipper = shipper_for(config)
    try:
        done = shipper.sweep(now=NOW)
    finally:
        close(shipper)
    assert done["shipped_expired"] == 2 and done["dead_letter_archives_expired"] == 2
    assert [seq for seq, _ in list_segments(config.shipped_dir)] == [3, 4]
    assert sorted(p.name for p in config.spool_dir.glob("dead-letter-*")) == \
        ["dead-letter-2026-10-01.jsonl"]
    # The unshipped segment is 400 days old and still there.
    assert [seq for seq, _ in list_segments(config.spool_dir)] == [101]
    assert not shipper.sweep(now=NOW)["shipped_expired"]  # a second sweep: nothing more


def test_the_dead_letter_file_is_archived_after_its_last_day(tmp_path):
    config = make_config(tmp_path / "spool", dead_letter_keep_days=30)
    config.spool_dir.mkdir(parents=True)
    current = config.dead_letter_path
    current.write_text('{"reason": "today"}\n')
    shipper = shipper_for(config)
    try:
        assert shipper.sweep(now=NOW)["dead_letters_archived"] == 0  # written today: stays
        aged(current, 2)
        last_day = time.strftime("%Y-%m-%d", time.gmtime(NOW - 2 * DAY))
        assert shipper.sweep(now=NOW)["dead_letters_archived"] == 1
        archive = config.spool_dir / f"dead-letter-{last_day}.jsonl"
        assert archive.read_text() == '{"reason": "today"}\n' and not current.exists()
        # The same day archived again (the file came back with that day's time): both kept.
        current.write_text('{"reason": "again"}\n')
        aged(current, 2)
        shipper.sweep(now=NOW)
        assert (config.spool_dir / f"dead-letter-{last_day}.2.jsonl").exists()
        assert archive.read_text() == '{"reason": "today"}\n'
        # 31 days on, the archives go.
        assert shipper.sweep(now=NOW + 31 * DAY)["dead_letter_archives_expired"] == 2
    finally:
        close(shipper)


def test_shipped_copies_give_way_when_the_disk_is_short(tmp_path):
    # min_free_bytes above the disk's own size: the disk always counts as short, so every
    # shipped copy goes, oldest first, however fresh; the unshipped segment stays.
    free = os.statvfs(tmp_path).f_blocks * os.statvfs(tmp_path).f_frsize
    config = make_config(tmp_path / "spool", keep_shipped_segments=True,
                         min_free_bytes=free + 1)
    plant(config, shipped_ages=[0.5, 0.2, 0.1])
    shipper = shipper_for(config)
    try:
        assert shipper.sweep(now=NOW)["shipped_for_space"] == 3
    finally:
        close(shipper)
    assert list_segments(config.shipped_dir) == []
    assert [seq for seq, _ in list_segments(config.spool_dir)] == [101]


def test_without_shortage_or_age_limit_copies_are_kept(tmp_path):
    config = make_config(tmp_path / "spool", keep_shipped_segments=True)
    plant(config, shipped_ages=[400, 1])
    shipper = shipper_for(config)
    try:
        assert not any(shipper.sweep(now=NOW).values())
    finally:
        close(shipper)
    assert len(list_segments(config.shipped_dir)) == 2


@pytest.mark.parametrize("value", [0, -1, "7", float("nan"), True])
def test_bad_retention_is_refused_naming_the_field(tmp_path, value):
    for field in ("shipped_keep_days", "dead_letter_keep_days"):
        with pytest.raises(TrafficConfigError, match=f"'{field}' must be a number of days > 0"):
            make_config(tmp_path, **{field: value})
