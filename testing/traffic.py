"""Traffic logger test data: configs, records and spool segments; and reading the spool
of a lab orchestrator."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from autocode.traffic.config import TrafficConfig, parse_config
from autocode.traffic.record import iso_timestamp
from autocode.traffic.spool import segment_name
from autocode.traffic.writer import encode_record


def make_config(spool_dir: Path, **overrides: Any) -> TrafficConfig:
    data: dict[str, Any] = {"spool_dir": str(spool_dir), "min_free_bytes": 0,
                            "writer_retry_seconds": 0.05}
    es = overrides.pop("elasticsearch", {})
    data.update(overrides)
    data["elasticsearch"] = {"retry_initial": 0.001, "retry_max": 0.01,
                             "poll_interval": 0.01, **es}
    return parse_config(data)


def fake_record(n: int, **fields: Any) -> dict:
    return {"@timestamp": iso_timestamp(1_700_000_000 + n), "record_id": uuid.uuid4().hex,
            "worker_id": "w1", "method": "GET", "url": f"http://example.test/{n}",
            "status": 200, "n": n, **fields}


def write_segment(spool_dir: Path, seq: int, records: list[dict], tail: bytes = b"") -> Path:
    spool_dir.mkdir(parents=True, exist_ok=True)
    path = spool_dir / segment_name(seq)
    path.write_bytes(b"".join(encode_record(r) for r in records) + tail)
    return path


def remote_spool_records(ssh, spool_dir: str, predicate, want: int, timeout: float = 15
                         ) -> list[dict]:
    """Records in the orchestrator's spool (read over `ssh(host, command)`) matching
    `predicate`; waits up to `timeout` for the writer to have `want` of them."""
    deadline = time.monotonic() + timeout
    while True:
        text = ssh("orchestrator", f"cat {spool_dir}/segment-*.jsonl 2>/dev/null || true").stdout
        found = [r for r in map(json.loads, text.splitlines()) if predicate(r)]
        if len(found) >= want or time.monotonic() > deadline:
            return found
        time.sleep(0.5)
