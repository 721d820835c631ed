"""Throughput and latency through mitmdump with and without the traffic logger addon.

Variants, one run, same load: bare mitmdump; `autocode-proxy` (mitmdump with the addon
built in, as deployed) with the shipper sending to the Elasticsearch double, and with the
shipper pointed at a closed loopback port (Elasticsearch unreachable), also with spend
metering and per-worker rate limits on (non-LLM traffic: what metering must not slow);
for comparison, bare mitmdump loading the addon as a script (`-s`); and LLM API calls
streamed as SSE from the lab's LLM fixture, through bare mitmdump and through the metering
proxy, which reads each stream as it passes. On a small shared machine
one pass per variant is mostly noise, so the variants alternate over several rounds, each
round in a rotated order, and the table gives medians with their spread, ratios of
medians, and the records spooled versus requests answered over all rounds.
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
from bench.hooks import cost_per_flow_us
from bench.load import LoadResult, run_load
from testing.mitmdump import free_port, mitmdump, stop, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
BARE = "bare mitmdump"
BARE_SSE = "bare mitmdump, SSE"
SHIPPER_NICE = 10  # the shipper unit's Nice=


@dataclass
class VariantResult:
    name: str
    load: LoadResult
    spooled: int | None = None
    shipped: int | None = None
    proxy_cpu_s: float = 0.0  # CPU the proxy used under load (warm-up included)
    shipper_cpu_s: float | None = None  # CPU the shipper and the ES double used meanwhile
    es_double_cpu_s: float | None = None


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def background(cmd: list[str], log_path: Path, port: int | None = None, nice: int = 0):
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                preexec_fn=(lambda: os.nice(nice)) if nice else None)
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


def metering_section(workdir: Path, llm_port: int) -> dict:
    """Metering as deployed (tasks/metering.py), the fixture's API metered, and rate limits
    so high they only cost their bookkeeping."""
    price = {"input": "3", "output": "15"}
    return {"ledger": str(workdir / "metered.sqlite3"), "prices_taken_on": "2026-11-30",
            "apis": [{"host": "127.0.0.1", "path": "/v1/messages", "provider": "anthropic"}],
            "prices": {"lab-model": price}, "unknown_model_price": price,
            "workers": {"bench": {"daily_budget_usd": "1000000"}},
            "rate_limit": {"requests_per_second": 1e9, "burst": 10**9, "max_concurrent": 10**6}}


def run_variant(name: str, workdir: Path, args, upstream: str, es_url: str | None = None,
                expect_shipping: bool = False, as_script: bool = False,
                es_double_pid: int | None = None, metering: dict | None = None,
                body: bytes | None = None) -> VariantResult:
    workdir.mkdir(parents=True)
    config_path = None
    shipper_proc = None
    es_before = cpu_seconds(es_double_pid) if es_double_pid and expect_shipping else None
    with ExitStack() as stack:
        if es_url is not None:
            config_path = workdir / "traffic.yaml"
            config_path.write_text(yaml.safe_dump({
                "spool_dir": str(workdir / "spool"), "keep_shipped_segments": True,
                "workers": {"127.0.0.1": "bench"},
                "elasticsearch": {"url": es_url, "retry_max": 2.0},
                **({"metering": metering} if metering else {}),
            }))
            shipper = [sys.executable, "-m", "autocode.traffic.cli", "--config", str(config_path)]
            # As its unit runs it (templates/mitmproxy): the spool absorbs what it defers.
            shipper_log = workdir / "shipper.log"
            shipper_proc = stack.enter_context(background(shipper, shipper_log,
                                                          nice=SHIPPER_NICE))
            # Its start-up (imports) is not part of any measured window.
            deadline = time.monotonic() + 30
            while "traffic shipper:" not in shipper_log.read_text(errors="replace"):
                if time.monotonic() > deadline or shipper_proc.poll() is not None:
                    raise SystemExit(f"the shipper did not start:\n{shipper_log.read_text()}")
                time.sleep(0.05)
            shipper_started_cpu = cpu_seconds(shipper_proc.pid)
        with mitmdump(workdir, config_path, as_script=as_script) as (proxy_port, _):
            proxy_pid = int(subprocess.run(["pgrep", "-f", f"listen-port {proxy_port}"],
                                           capture_output=True, text=True).stdout.split()[0])
            proxy_cpu = cpu_seconds(proxy_pid)
            load = asyncio.run(run_load(proxy_port, upstream, args.concurrency, args.warmup,
                                        args.duration, args.max_requests, body))
            proxy_cpu = cpu_seconds(proxy_pid) - proxy_cpu
        # mitmdump has stopped (SIGINT), so its writer has flushed everything.
        result = VariantResult(name, load, proxy_cpu_s=proxy_cpu)
        if shipper_proc is not None:
            result.shipper_cpu_s = cpu_seconds(shipper_proc.pid) - shipper_started_cpu
        if es_before is not None:
            result.es_double_cpu_s = cpu_seconds(es_double_pid) - es_before
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

    def baseline(name: str) -> list[VariantResult]:
        # An SSE variant against bare mitmdump under the same SSE load, the rest against GETs.
        return rounds[BARE_SSE] if "SSE" in name and BARE_SSE in rounds else rounds[BARE]

    def paired(name: str, results: list[VariantResult], fn) -> list[float]:
        # Each round against bare's run of the same round: drift between rounds cancels.
        return [fn(r.load, b.load) for r, b in zip(results, baseline(name), strict=False)]

    header = (f"{'variant':<38}{'req/s':>8}{'(min-max)':>12}{'p50 ms':>8}{'p99 ms':>8}"
              f"{'vs bare':>9}{'paired':>8}{'p99 +ms':>9}{'paired':>8}{'answered':>10}"
              f"{'spooled':>9}{'shipped':>9}{'lost':>6}")
    print()
    print(header)
    print("-" * len(header))
    summary = {}
    for name, results in rounds.items():
        bare_rps = med(baseline(name), lambda x: x.throughput)
        bare_p99 = med(baseline(name), lambda x: x.percentile(99))
        rps = med(results, lambda x: x.throughput)
        p99 = med(results, lambda x: x.percentile(99))
        spread = [r.load.throughput for r in results]
        answered = sum(r.load.ok + r.load.other_status for r in results)
        logged = results[0].spooled is not None
        spooled = sum(r.spooled for r in results) if logged else None
        shipped = sum(r.shipped for r in results) if logged else None
        lost = answered - spooled if logged else None
        paired_ratio = statistics.median(paired(
            name, results, lambda x, b: x.throughput / b.throughput))
        paired_p99 = statistics.median(paired(
            name, results, lambda x, b: x.percentile(99) - b.percentile(99)))
        print(f"{name:<38}{rps:>8.0f}{f'({min(spread):.0f}-{max(spread):.0f})':>12}"
              f"{med(results, lambda x: x.percentile(50)):>8.2f}{p99:>8.2f}"
              f"{rps / bare_rps:>9.3f}{paired_ratio:>8.3f}{p99 - bare_p99:>+9.2f}"
              f"{paired_p99:>+8.2f}{answered:>10}"
              f"{'' if spooled is None else spooled:>9}{'' if shipped is None else shipped:>9}"
              f"{'' if lost is None else lost:>6}")
        summary[name] = {"rps_median": round(rps, 1), "rps_runs": [round(x, 1) for x in spread],
                         "p99_ms_median": round(p99, 3), "vs_bare": round(rps / bare_rps, 3),
                         "vs_bare_paired": round(paired_ratio, 3),
                         "p99_ms_added_paired": round(paired_p99, 3),
                         "answered": answered, "spooled": spooled, "shipped": shipped,
                         "lost": lost}
    print()
    print("CPU seconds per 1000 requests answered (steadier than req/s on a shared machine):")
    for name, results in rounds.items():
        bare = baseline(name)
        bare_answered = sum(r.load.ok + r.load.other_status for r in bare) / 1000
        bare_cpu = sum(r.proxy_cpu_s for r in bare) / bare_answered
        answered = sum(r.load.ok + r.load.other_status for r in results) / 1000
        proxy = sum(r.proxy_cpu_s for r in results) / answered
        line = f"  {name}: proxy {proxy:.3f} ({proxy / bare_cpu:.3f} of bare)"
        summary[name]["proxy_cpu_s_per_1000"] = round(proxy, 4)
        if results[0].shipper_cpu_s is None:
            print(line)
            continue
        shipper = sum(r.shipper_cpu_s for r in results) / answered
        line += f", shipper {shipper:.3f}"
        if results[0].es_double_cpu_s is not None:
            double = sum(r.es_double_cpu_s for r in results) / answered
            line += f", Elasticsearch double {double:.3f} (a stand-in, on the same 2 CPUs)"
        print(line)
    print("Medians over the rounds. vs bare: median req/s / bare's median (target >= 0.95);")
    print("p99 +ms: median p99 minus bare's (target < 2 ms); paired: the median of each")
    print("round's figure against bare's run in the same round (slow drift of a shared machine")
    print("cancels); lost: answered requests minus records in the spool, all rounds (must be")
    print("0). Informational; nothing asserts timings.")
    return summary


def print_hook_cost(bare_cpu_s_per_1000: float, metering: dict) -> dict:
    """The addon's own CPU per flow, in-process (bench/hooks.py), beside bare mitmdump's
    CPU per request under the load above: the share of the proxy's work it adds."""
    bare_us = bare_cpu_s_per_1000 * 1000
    plain, metered = cost_per_flow_us(None), cost_per_flow_us(metering)
    print("\nThe addon's own CPU per flow, in-process (its hooks and spool writer on prepared "
          "flows;\nsteadier than req/s), beside bare mitmdump's CPU per request above "
          f"({bare_us:.0f} us):")
    for name, cost in (("addon", plain), ("addon + metering", metered)):
        print(f"  {name}: {cost:.1f} us per flow = {cost / bare_us:.3f} of bare's work "
              f"(throughput ratio if CPU-bound: {bare_us / (bare_us + cost):.3f})")
    return {"bare_cpu_us_per_request": round(bare_us, 1), "addon_us": round(plain, 1),
            "addon_metering_us": round(metered, 1)}


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
        llm_port = free_port()
        stack.enter_context(background([sys.executable, "lab/fixtures/internet_server.py",
                                        "--bind", "127.0.0.1", "--http-port", str(llm_port)],
                                       tmp_path / "llm.log", llm_port))
        llm = f"http://127.0.0.1:{llm_port}/v1/messages"
        sse = json.dumps({"model": "lab-model", "max_tokens": 64, "stream": True, "messages": [
            {"role": "user", "content": "Create the file a.txt containing exactly: bench"}]}
        ).encode()
        stack.enter_context(background([sys.executable, "-m", "bench.upstream",
                                        str(upstream_port)], tmp_path / "upstream.log",
                                       upstream_port))
        es_double = [sys.executable, "-m", "testing.elasticsearch_double_process", str(es_port)]
        es_proc = stack.enter_context(background(es_double, tmp_path / "es.log", es_port))
        upstream = f"http://127.0.0.1:{upstream_port}/"
        es, closed = f"http://127.0.0.1:{es_port}", f"http://127.0.0.1:{closed_port}"
        # (name, Elasticsearch URL or None for bare, shipping expected, addon as a script,
        #  metering on, an SSE LLM call instead of a GET)
        plan = [
            (BARE, None, False, False, False, False),
            ("autocode-proxy, shipper -> ES double", es, True, False, False, False),
            ("autocode-proxy, ES unreachable", closed, False, False, False, False),
            ("autocode-proxy + metering, ES unreach.", closed, False, False, True, False),
            ("mitmdump -s addon, ES unreachable", closed, False, True, False, False),
            (BARE_SSE, None, False, False, False, True),
            ("autocode-proxy + metering, SSE", closed, False, False, True, True),
        ]
        rounds: dict[str, list[VariantResult]] = {entry[0]: [] for entry in plan}
        for n in range(args.rounds):
            # Rotate the order so no variant always runs first, or last.
            for entry in plan[n % len(plan):] + plan[:n % len(plan)]:
                name, es_url, ships, as_script, metered, streamed = entry
                print(f"  round {n + 1}/{args.rounds}: {name} ...", flush=True)
                workdir = tmp_path / f"r{n}-{plan.index(entry)}"
                rounds[name].append(run_variant(
                    name, workdir, args, llm if streamed else upstream, es_url, ships,
                    as_script, es_proc.pid,
                    metering_section(workdir, llm_port) if metered else None,
                    sse if streamed else None))
        summary = print_table(rounds)
        summary["addon cost per flow"] = print_hook_cost(
            summary[BARE]["proxy_cpu_s_per_1000"], metering_section(tmp_path, llm_port))
        print("\njson: " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
