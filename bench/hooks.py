"""The addon's own CPU cost per flow, measured in-process: the real AutocodeLogger, its
real spool writer (encoding, writing, fsync) and, when asked, spend metering, driven by
prepared mitmproxy flows shaped like the load's GETs. No sockets and no load generator,
so this figure hardly moves with a shared machine's noise, unlike req/s; set beside bare
mitmdump's CPU per request from the same run, it is the share of the proxy's work the
addon adds."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import yaml
from mitmproxy import http
from mitmproxy.test import taddons, tflow

from autocode.traffic.addon import AutocodeLogger


def _flows(count: int) -> list[http.HTTPFlow]:
    flows = []
    for _ in range(count):
        flow = tflow.tflow(resp=True)
        flow.client_conn.peername = ("127.0.0.1", 40000)
        flow.request.headers["Host"] = "127.0.0.1:8081"
        flow.request.headers["User-Agent"] = "bench/1"
        flow.request.headers["Accept"] = "*/*"
        flow.response.headers["Content-Length"] = "2"
        flows.append(flow)
    return flows


def cost_per_flow_us(metering: dict | None, count: int = 5000, repeats: int = 5) -> float:
    """Median over `repeats` of the process CPU (every thread) per flow, in microseconds,
    the writer's flush at the end included."""
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="autocode-hooks-") as tmp:
            config = Path(tmp) / "traffic.yaml"
            config.write_text(yaml.safe_dump({
                "spool_dir": f"{tmp}/spool", "workers": {"127.0.0.1": "bench"},
                "elasticsearch": {"url": "http://127.0.0.1:9"},
                **({"metering": {**metering, "ledger": f"{tmp}/metered.sqlite3"}}
                   if metering else {})}))
            addon = AutocodeLogger()
            flows = _flows(count)
            with taddons.context(addon) as tctx:
                tctx.configure(addon, autocode_traffic_config=str(config))
                started = time.process_time()
                for flow in flows:
                    addon.requestheaders(flow)
                    addon.request(flow)
                    addon.responseheaders(flow)
                    addon.response(flow)
                addon.done()  # the writer flushes what is queued
                runs.append((time.process_time() - started) / count * 1e6)
    return statistics.median(runs)
