"""Throughput and latency through mitmdump with and without the traffic logger addon.

Variants, one run, same load: bare mitmdump; mitmdump + addon with the shipper sending to
the Elasticsearch double; mitmdump + addon with the shipper pointed at a closed loopback
port (Elasticsearch unreachable). On a small shared machine one pass per variant is mostly
noise, so the variants alternate over several rounds, each round in a rotated order, and
the table gives medians with their spread, ratios of medians, and the records spooled
versus requests answered over all rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
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
from testing.mitmdump import free_port, mitmdump, stop, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
BARE = "bare mitmdump"


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
        stop(proc, signal.SIGTERM, grace=10)


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


def print_table(rounds: dict[str, list[VariantResult]]) -> dict:
    def med(results, fn):
        return statistics.median(fn(r.load) for r in results)

    bare = rounds[BARE]
    bare_rps = med(bare, lambda x: x.throughput)
    bare_p99 = med(bare, lambda x: x.percentile(99))
    header = (f"{'variant':<34}{'req/s':>8}{'(min-max)':>12}{'p50 ms':>8}{'p99 ms':>8}"
              f"{'vs bare':>9}{'p99 +ms':>9}{'answered':>10}{'spooled':>9}{'shipped':>9}"
              f"{'lost':>6}")
    print()
    print(header)
    print("-" * len(header))
    summary = {}
    for name, results in rounds.items():
        rps = med(results, lambda x: x.throughput)
        p99 = med(results, lambda x: x.percentile(99))
        spread = [r.load.throughput for r in results]
        answered = sum(r.load.ok + r.load.other_status for r in results)
        logged = results[0].spooled is not None
        spooled = sum(r.spooled for r in results) if logged else None
        shipped = sum(r.shipped for r in results) if logged else None
        lost = answered - spooled if logged else None
        print(f"{name:<34}{rps:>8.0f}{f'({min(spread):.0f}-{max(spread):.0f})':>12}"
              f"{med(results, lambda x: x.percentile(50)):>8.2f}{p99:>8.2f}"
              f"{rps / bare_rps:>9.3f}{p99 - bare_p99:>+9.2f}{answered:>10}"
              f"{'' if spooled is None else spooled:>9}{'' if shipped is None else shipped:>9}"
              f"{'' if lost is None else lost:>6}")
        summary[name] = {"rps_median": round(rps, 1), "rps_runs": [round(x, 1) for x in spread],
                         "p99_ms_median": round(p99, 3), "vs_bare": round(rps / bare_rps, 3),
                         "answered": answered, "spooled": spooled, "shipped": shipped,
                         "lost": lost}
    print()
    print("Medians over the rounds. vs bare: median req/s / bare's median (target >= 0.95);")
    print("p99 +ms: median p99 minus bare's (target < 2 ms); lost: answered requests minus")
    print("records in the spool, all rounds (must be 0). Informational; nothing asserts timings.")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0,
                        help="measured seconds per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=200_000)
    args = parser.parse_args(argv)
    print(f"bench: {args.concurrency} connections, {args.warmup:.0f}s warmup + "
          f"{args.duration:.0f}s per variant, {args.rounds} rounds, {os.cpu_count()} CPUs, "
          "all on 127.0.0.1",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="autocode-bench-") as tmp, ExitStack() as stack:
        tmp_path = Path(tmp)
        upstream_port, es_port, closed_port = free_port(), free_port(), free_port()
        stack.enter_context(background([sys.executable, "-m", "bench.upstream",
                                        str(upstream_port)], tmp_path / "upstream.log",
                                       upstream_port))
        es_double = [sys.executable, "-m", "testing.elasticsearch_double_process", str(es_port)]
        stack.enter_context(background(es_double, tmp_path / "es.log", es_port))
        upstream = f"http://127.0.0.1:{upstream_port}/"
        plan = [
            (BARE, None, False),
            ("addon, shipper -> ES double", f"http://127.0.0.1:{es_port}", True),
            ("addon, ES unreachable (closed port)", f"http://127.0.0.1:{closed_port}", False),
        ]
        rounds: dict[str, list[VariantResult]] = {name: [] for name, _, _ in plan}
        for n in range(args.rounds):
            # Rotate the order so no variant always runs first, or last.
            for name, es_url, ships in plan[n % len(plan):] + plan[:n % len(plan)]:
                print(f"  round {n + 1}/{args.rounds}: {name} ...", flush=True)
                workdir = tmp_path / f"r{n}-{len(rounds[name])}-{plan.index((name, es_url, ships))}"
                rounds[name].append(run_variant(name, workdir, args, upstream, es_url, ships))
        summary = print_table(rounds)
        print("\njson: " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
