"""Throughput and latency through mitmdump with and without the traffic logger addon.

Variants, one run, same load: bare mitmdump; mitmdump + addon with the shipper sending to
the Elasticsearch double; mitmdump + addon with the shipper pointed at a closed loopback
port (Elasticsearch unreachable); bare again (to show run-to-run noise). Then a table with
the addon/bare ratios and the records spooled versus requests sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from autocode.traffic.spool import Checkpoint, list_segments
from bench.load import LoadResult, run_load
from tests.unit.traffic.proxy_helpers import free_port, mitmdump, wait_for_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class VariantResult:
    name: str
    load: LoadResult
    spooled: int | None = None
    shipped: int | None = None


@contextmanager
def background(cmd: list[str], log_path: Path, port: int | None = None):
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        if port is not None:
            wait_for_port(port, proc, log_path)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def count_records(spool_dir: Path) -> int:
    total = 0
    for directory in (spool_dir, spool_dir / "shipped"):
        if directory.is_dir():
            for _, path in list_segments(directory):
                with open(path, "rb") as fh:
                    total += sum(1 for _ in fh)
    return total


def run_variant(name: str, workdir: Path, args, upstream: str, es_url: str | None = None,
                expect_shipping: bool = False) -> VariantResult:
    workdir.mkdir(parents=True)
    config_path = None
    with ExitStack() as stack:
        if es_url is not None:
            config_path = workdir / "traffic.yaml"
            config_path.write_text(yaml.safe_dump({
                "spool_dir": str(workdir / "spool"), "keep_shipped_segments": True,
                "workers": {"127.0.0.1": "bench"},
                "elasticsearch": {"url": es_url, "retry_max": 2.0},
            }))
            shipper = [sys.executable, "-m", "autocode.traffic.cli", "--config", str(config_path)]
            stack.enter_context(background(shipper, workdir / "shipper.log"))
        with mitmdump(workdir, config_path) as (proxy_port, _):
            load = asyncio.run(run_load(proxy_port, upstream, args.concurrency, args.warmup,
                                        args.duration, args.max_requests))
        # mitmdump has stopped (SIGINT), so its writer has flushed everything.
        result = VariantResult(name, load)
        if config_path is None:
            return result
        spool = workdir / "spool"
        result.spooled = count_records(spool)
        deadline = time.monotonic() + (60 if expect_shipping else 0)
        while time.monotonic() < deadline:
            if Checkpoint.load(spool / "checkpoint.json").shipped_total >= result.spooled:
                break
            time.sleep(0.2)
        result.shipped = Checkpoint.load(spool / "checkpoint.json").shipped_total
    return result


def print_table(results: list[VariantResult]) -> None:
    bare = [r for r in results if r.spooled is None]
    bare_rps = sum(r.load.throughput for r in bare) / len(bare)
    bare_p99 = sum(r.load.percentile(99) for r in bare) / len(bare)
    header = (f"{'variant':<34}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'vs bare':>9}"
              f"{'p99 +ms':>9}{'sent':>9}{'non-200':>9}{'spooled':>9}{'shipped':>9}{'lost':>6}")
    print()
    print(header)
    print("-" * len(header))
    for r in results:
        load = r.load
        ratio = load.throughput / bare_rps if bare_rps else float("nan")
        delta = load.percentile(99) - bare_p99
        answered = load.ok + load.other_status
        lost = "" if r.spooled is None else str(answered - r.spooled)
        print(f"{r.name:<34}{load.throughput:>9.0f}{load.percentile(50):>9.2f}"
              f"{load.percentile(99):>9.2f}{ratio:>9.3f}{delta:>+9.2f}{load.sent:>9}"
              f"{load.other_status + load.errors:>9}"
              f"{'' if r.spooled is None else r.spooled:>9}"
              f"{'' if r.shipped is None else r.shipped:>9}{lost:>6}")
    print()
    print("vs bare: throughput / mean of the bare runs (target >= 0.95); p99 +ms: p99 minus "
          "mean bare p99 (target < 2 ms);")
    print("lost: answered requests minus records in the spool (must be 0). Informational only;"
          " nothing here asserts timings.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--duration", type=float, default=12.0, help="measured seconds/variant")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=200_000)
    args = parser.parse_args(argv)
    print(f"bench: {args.concurrency} connections, {args.warmup:.0f}s warmup + "
          f"{args.duration:.0f}s per variant, {os.cpu_count()} CPUs, all on 127.0.0.1",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="autocode-bench-") as tmp, ExitStack() as stack:
        tmp_path = Path(tmp)
        upstream_port, es_port, closed_port = free_port(), free_port(), free_port()
        stack.enter_context(background([sys.executable, "-m", "bench.upstream",
                                        str(upstream_port)], tmp_path / "upstream.log",
                                       upstream_port))
        stack.enter_context(background([sys.executable, "-m", "bench.es_double_process",
                                        str(es_port)], tmp_path / "es.log", es_port))
        upstream = f"http://127.0.0.1:{upstream_port}/"
        plan = [
            ("bare mitmdump (run 1)", None, False),
            ("addon, shipper -> ES double", f"http://127.0.0.1:{es_port}", True),
            ("addon, ES unreachable (closed port)", f"http://127.0.0.1:{closed_port}", False),
            ("bare mitmdump (run 2)", None, False),
        ]
        results = []
        for i, (name, es_url, ships) in enumerate(plan):
            print(f"  running: {name} ...", flush=True)
            results.append(run_variant(name, tmp_path / f"v{i}", args, upstream, es_url, ships))
        print_table(results)
        summary = {r.name: {"rps": round(r.load.throughput, 1),
                            "p50_ms": round(r.load.percentile(50), 3),
                            "p99_ms": round(r.load.percentile(99), 3), "sent": r.load.sent,
                            "spooled": r.spooled, "shipped": r.shipped} for r in results}
        print("\njson: " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
