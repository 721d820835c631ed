"""The package cache, cold and warm: the same `pip download` of a few wheels by four
clients in turn (four workers, as far as the cache can tell: it keys by URL, never by
who asks), through `autocode-proxy` with the cache on and, side by side, with it off.
Bytes fetched from upstream and seconds per client, from the proxy's own audit records.

Needs PyPI (files.pythonhosted.org), reached the way this machine reaches it; without it
the bench says so and stops. Informational: nothing asserts timings.

    .venv/bin/python -m bench.cache [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from autocode.traffic.record import iso_timestamp
from autocode.traffic.spool import list_segments
from testing.mitmdump import mitmdump

WHEELS = ("six==1.16.0", "idna==3.7", "packaging==24.1", "certifi==2024.7.4")
CLIENTS = 4
SYSTEM_CAS = Path("/etc/ssl/certs/ca-certificates.crt")


def pypi_reachable() -> bool:
    try:
        with socket.create_connection(("files.pythonhosted.org", 443), timeout=5):
            return True
    except OSError:
        return False


def spooled(spool: Path) -> list[dict]:
    records = []
    for directory in (spool, spool / "shipped"):
        if directory.is_dir():
            for _, path in list_segments(directory):
                records += [json.loads(line) for line in path.read_text().splitlines()]
    return records


def run_clients(workdir: Path, cache: bool) -> list[dict]:
    """Four `pip download`s in turn through the proxy; per client: seconds, and wheel bytes
    from upstream and from the cache, read from the audit records of its time window."""
    workdir.mkdir(parents=True)
    section = {"package_cache": {"dir": str(workdir / "cache")}} if cache else {}
    config = workdir / "traffic.yaml"
    config.write_text(yaml.safe_dump({
        "spool_dir": str(workdir / "spool"), "workers": {"127.0.0.1": "bench"},
        "elasticsearch": {"url": "http://127.0.0.1:9"}, **section}))
    windows = []
    upstream_ca = ("--set", f"ssl_verify_upstream_trusted_ca={SYSTEM_CAS}")
    with mitmdump(workdir, config, extra=upstream_ca) as (port, log_path):
        proxy_ca = workdir / "mitmproxy-conf" / "mitmproxy-ca-cert.pem"
        bundle = workdir / "trust.pem"
        bundle.write_text(SYSTEM_CAS.read_text() + proxy_ca.read_text())
        for n in range(CLIENTS):
            target = workdir / f"client{n + 1}"
            started = time.time()
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
                 "--only-binary=:all:", "-q", "--disable-pip-version-check",
                 "--proxy", f"http://127.0.0.1:{port}", "--cert", str(bundle),
                 "-d", str(target), *WHEELS], capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                raise SystemExit(f"bench.cache: pip download failed:\n{done.stderr}\n"
                                 f"{log_path.read_text()[-2000:]}")
            windows.append((started, time.time(), len(list(target.glob("*.whl")))))
    records = [r for r in spooled(workdir / "spool")
               if r.get("host") == "files.pythonhosted.org" and r.get("status") == 200
               and str(r.get("url", "")).endswith(".whl")]
    clients = []
    for n, (started, ended, wheels) in enumerate(windows):
        begin, end = iso_timestamp(started), iso_timestamp(ended)
        mine = [r for r in records if begin <= r["@timestamp"] <= end]
        clients.append({
            "client": n + 1, "seconds": round(ended - started, 2), "wheels": wheels,
            "requests": len(mine),
            "upstream_bytes": sum(r.get("response_bytes") or 0 for r in mine
                                  if r.get("cache") != "hit"),
            "cache_bytes": sum(r.get("response_bytes") or 0 for r in mine
                               if r.get("cache") == "hit"),
            "hits": sum(r.get("cache") == "hit" for r in mine)})
    return clients


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    if not pypi_reachable():
        print("bench.cache: files.pythonhosted.org is not reachable from here; skipped")
        return 0
    print(f"bench.cache: `pip download` of {len(WHEELS)} wheels by {CLIENTS} clients in turn, "
          f"cache off and on, {args.rounds} round(s)", flush=True)
    results: dict[str, list[list[dict]]] = {"cache off": [], "cache on": []}
    with tempfile.TemporaryDirectory(prefix="autocode-bench-cache-") as tmp:
        for n in range(args.rounds):
            for name in (("cache off", "cache on") if n % 2 == 0 else ("cache on", "cache off")):
                results[name].append(run_clients(Path(tmp) / f"{name}-{n}".replace(" ", "-"),
                                                 name == "cache on"))
    header = (f"{'':<10}{'client':>7}{'seconds':>9}{'wheels':>8}{'hits':>6}"
              f"{'bytes upstream':>16}{'bytes from cache':>18}")
    print()
    print(header)
    print("-" * len(header))
    summary = {}
    for name, rounds in results.items():
        for client in range(CLIENTS):
            rows = [r[client] for r in rounds]
            print(f"{name:<10}{client + 1:>7}"
                  f"{statistics.median(r['seconds'] for r in rows):>9.2f}"
                  f"{rows[0]['wheels']:>8}{statistics.median(r['hits'] for r in rows):>6.0f}"
                  f"{statistics.median(r['upstream_bytes'] for r in rows):>16.0f}"
                  f"{statistics.median(r['cache_bytes'] for r in rows):>18.0f}")
        summary[name] = {
            "upstream_bytes_all_clients": statistics.median(
                sum(c["upstream_bytes"] for c in r) for r in rounds),
            "seconds_cold": statistics.median(r[0]["seconds"] for r in rounds),
            "seconds_warm_median": statistics.median(
                statistics.median(c["seconds"] for c in r[1:]) for r in rounds)}
    off, on = summary["cache off"], summary["cache on"]
    cold, warm = off["upstream_bytes_all_clients"], on["upstream_bytes_all_clients"]
    print(f"\nbytes fetched upstream by all {CLIENTS} clients: {cold:.0f} without the cache, "
          f"{warm:.0f} with it ({warm / max(cold, 1):.3f});"
          f" warm clients' median {on['seconds_warm_median']:.2f} s with the cache, "
          f"{off['seconds_warm_median']:.2f} s without. Seconds include pip's own start-up "
          "and its index requests, which are never cached.")
    print("\njson: " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
