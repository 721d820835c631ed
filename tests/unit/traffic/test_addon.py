"""AutocodeLogger with mitmproxy's own test utilities (taddons, tflow)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import yaml
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow, tutils

from autocode.traffic import addon as addon_module
from autocode.traffic.addon import AutocodeLogger
from autocode.traffic.spool import list_segments

pytestmark = pytest.mark.timeout(30)

SECRETS = ["sk-ant-abcdefghijklmnopqrstuvwx", "s3cr3t-basic", "sessionvalue", "apikeyvalue",
           "ghp_ABCDEFGHIJKLMNOPQRSTUVWX12", "hunter2", "qskey", "vendorsecret", "tokval",
           "setcookievalue", "refertoken"]


def write_config(tmp_path: Path, **overrides) -> Path:
    data = {"spool_dir": str(tmp_path / "spool"), "min_free_bytes": 0,
            "writer_retry_seconds": 0.05, "workers": {"10.20.0.11": "w1"}, **overrides}
    path = tmp_path / "traffic.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Harness:
    def __init__(self, tmp_path: Path, **overrides) -> None:
        self.addon = AutocodeLogger()
        self.tctx = taddons.context(self.addon)
        self.config_path = write_config(tmp_path, **overrides)
        self.tctx.configure(self.addon, autocode_traffic_config=str(self.config_path))

    def run(self, result):
        """A hook's result: hooks are plain functions; awaited if one ever returns a
        coroutine."""
        if asyncio.iscoroutine(result):
            return self.tctx.master.event_loop.run_until_complete(result)
        return result

    def cycle(self, flow: http.HTTPFlow) -> http.HTTPFlow:
        """requestheaders, then response (or error) unless the addon answered itself."""
        self.run(self.addon.requestheaders(flow))
        if flow.error is not None:
            self.run(self.addon.error(flow))
        else:
            self.run(self.addon.response(flow))
        return flow

    def records(self) -> list[dict]:
        self.addon.done()  # flushes the writer
        spool = self.addon.config.spool_dir
        return [json.loads(line) for _, path in list_segments(spool)
                for line in path.read_text().splitlines()]


@pytest.fixture
def harness(tmp_path):
    made = []

    def make(**overrides):
        made.append(Harness(tmp_path, **overrides))
        return made[-1]

    yield make
    for h in made:
        h.addon.done()


def flow_from(ip: str = "10.20.0.11", url: str = "http://example.test/path?q=1",
              method: str = "GET", req_body: bytes = b"", resp_body: bytes = b"hello",
              status: int = 200, req_headers=(), resp_headers=()) -> http.HTTPFlow:
    request = http.Request.make(method, url, req_body, dict(req_headers))
    request.timestamp_start, request.timestamp_end = time.time(), time.time()
    flow = tflow.tflow(req=request)
    flow.client_conn.peername = (ip, 40000)
    response = tutils.tresp(status_code=status, content=resp_body)
    for name, value in resp_headers:
        response.headers.add(name, value)
    response.timestamp_end = request.timestamp_start + 0.0123
    flow.response = response
    return flow


def test_record_has_the_flow_details(harness):
    h = harness()
    h.cycle(flow_from(method="POST", url="http://example.test:8080/v1/x?q=1",
                      req_body=b"x" * 1234, resp_body=b"y" * 77, status=201))
    [record] = h.records()
    assert record["worker_id"] == "w1"
    assert record["client_ip"] == "10.20.0.11"
    assert (record["method"], record["scheme"], record["host"], record["port"]) == (
        "POST", "http", "example.test", 8080)
    assert record["url"] == "http://example.test:8080/v1/x?q=1"
    assert (record["status"], record["request_bytes"], record["response_bytes"]) == (201, 1234, 77)
    assert record["duration_ms"] == pytest.approx(12.3, abs=0.01)
    assert record["@timestamp"].endswith("Z") and record["error"] is None
    assert len(record["record_id"]) == 32


def test_unknown_client_ip_is_logged_as_unknown(harness):
    h = harness()
    h.cycle(flow_from(ip="::ffff:10.99.0.1"))
    h.cycle(flow_from(ip="::ffff:10.20.0.11"))
    assert [(r["worker_id"], r["client_ip"]) for r in h.records()] == [
        ("unknown", "10.99.0.1"), ("w1", "10.20.0.11")]


def test_credentials_are_redacted_before_the_record_leaves_the_hook(harness, tmp_path):
    h = harness(redact_headers=["X-Vendor-Auth"], redact_patterns=["^x-internal-"])
    h.cycle(flow_from(
        url="http://alice:hunter2@example.test/p?api_key=qskey&q=ok&access_token=tokval",
        req_headers=[
            ("Authorization", "Bearer sk-ant-abcdefghijklmnopqrstuvwx"),
            ("Proxy-Authorization", "Basic s3cr3t-basic"),
            ("Cookie", "session=sessionvalue; theme=dark"),
            ("X-Api-Key", "apikeyvalue"), ("api-key", "apikeyvalue"),
            ("X-Vendor-Auth", "vendorsecret"), ("X-Internal-Thing", "vendorsecret"),
            ("X-Auth-Token", "tokval"), ("User-Agent", "agent ghp_ABCDEFGHIJKLMNOPQRSTUVWX12"),
            ("Referer", "http://example.test/?token=refertoken"),
        ],
        resp_headers=[("Set-Cookie", "sid=setcookievalue; Path=/; HttpOnly")],
    ))
    [record] = h.records()
    raw = b"".join(p.read_bytes() for _, p in list_segments(tmp_path / "spool")).decode()
    assert not [s for s in SECRETS if s in raw]
    headers = record["request_headers"]
    assert headers["authorization"] == "Bearer [REDACTED]"
    assert headers["proxy-authorization"] == "Basic [REDACTED]"
    assert headers["cookie"] == "session=[REDACTED]; theme=[REDACTED]"
    assert headers["x-api-key"] == headers["api-key"] == headers["x-vendor-auth"] == "[REDACTED]"
    assert headers["x-internal-thing"] == headers["x-auth-token"] == "[REDACTED]"
    assert headers["user-agent"] == "agent [REDACTED]"
    assert record["response_headers"]["set-cookie"] == "sid=[REDACTED]"
    assert "q=ok" in record["url"] and "api_key=[REDACTED]" in record["url"]


def test_failed_flow_is_recorded_with_its_error(harness):
    h = harness()
    flow = flow_from()
    flow.response = None
    flow.error = tflow.terr("connection refused by upstream")
    h.cycle(flow)
    [record] = h.records()
    assert record["error"] == "connection refused by upstream"
    assert record["status"] is None and record["response_bytes"] is None


def test_flow_is_recorded_once_even_if_response_and_error_both_fire(harness):
    h = harness()
    flow = h.cycle(flow_from())
    flow.error = tflow.terr("client went away")
    h.run(h.addon.error(flow))
    assert len(h.records()) == 1


def test_fail_closed_spool_unwritable_gives_503_then_recovers(harness, tmp_path):
    (tmp_path / "spool").write_text("a file where the spool directory should be")
    h = harness()
    assert not h.addon.writer.healthy
    blocked = h.cycle(flow_from())
    assert blocked.response.status_code == 503
    body = blocked.response.get_text()
    assert "audit log" in body and "is not a directory" in body
    assert h.addon.writer.in_flight == 0  # blocked flows hold no queue slot

    (tmp_path / "spool").unlink()
    for _ in range(200):  # the writer probes every 0.05 s
        if h.addon.writer.healthy:
            break
        time.sleep(0.01)
    passed = h.cycle(flow_from())
    assert passed.response.status_code == 200
    assert len(h.records()) == 1  # the blocked flow never went out, so it has no record


def test_fail_open_lets_traffic_through_when_spool_unwritable(harness, tmp_path):
    (tmp_path / "spool").write_text("not a directory")
    h = harness(fail_closed=False)
    flow = h.cycle(flow_from())
    assert flow.response.status_code == 200


def test_queue_full_blocks_new_flows_under_fail_closed(harness):
    h = harness(queue_size=1)
    first = flow_from()
    h.run(h.addon.requestheaders(first))  # in flight, holds the only slot
    second = flow_from()
    h.run(h.addon.requestheaders(second))
    assert second.response.status_code == 503
    assert "audit queue full" in second.response.get_text()
    h.run(h.addon.response(first))
    for _ in range(200):
        if h.addon.writer.in_flight == 0:
            break
        time.sleep(0.01)
    third = h.cycle(flow_from())
    assert third.response.status_code == 200
    assert len(h.records()) == 2


def test_queue_full_under_fail_open_passes_and_counts_the_drop(harness):
    h = harness(queue_size=1, fail_closed=False)
    first = flow_from()
    h.run(h.addon.requestheaders(first))
    second = h.cycle(flow_from())
    assert second.response.status_code == 200
    assert h.addon.writer.stats.records_dropped == 1
    h.run(h.addon.response(first))
    assert len(h.records()) == 1


def test_records_queued_during_an_outage_are_written_after_recovery(harness, tmp_path):
    h = harness()
    spool = tmp_path / "spool"
    h.cycle(flow_from())
    for _ in range(200):
        if h.addon.writer.stats.records_written == 1:
            break
        time.sleep(0.01)
    in_flight = [flow_from() for _ in range(5)]
    for flow in in_flight:
        h.run(h.addon.requestheaders(flow))
    spool.rename(tmp_path / "moved-away")
    spool.write_text("blocker")
    for flow in in_flight:  # these already went out: their records must survive
        h.run(h.addon.response(flow))
    for _ in range(200):
        if not h.addon.writer.healthy:
            break
        time.sleep(0.01)
    assert h.cycle(flow_from()).response.status_code == 503
    spool.unlink()
    for _ in range(200):
        if h.addon.writer.healthy and h.addon.writer.in_flight == 0:
            break
        time.sleep(0.01)
    moved = [line for _, p in list_segments(tmp_path / "moved-away")
             for line in p.read_text().splitlines()]
    assert len(moved) + len(h.records()) == 6


def test_unconfigured_addon_fails_closed(tmp_path):
    addon = AutocodeLogger()
    with taddons.context(addon):
        flow = flow_from()
        addon.requestheaders(flow)
    assert flow.response.status_code == 503
    assert "not configured" in flow.response.get_text()


def test_invalid_config_is_refused_with_the_field_named(tmp_path):
    addon = AutocodeLogger()
    path = tmp_path / "traffic.yaml"
    path.write_text(yaml.safe_dump({"spool_dir": "relative/dir"}))
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match="'spool_dir'.*fix"):
            tctx.configure(addon, autocode_traffic_config=str(path))


def test_addon_script_loads_through_mitmproxys_script_loader(tmp_path):
    with taddons.context() as tctx:
        loaded = tctx.script(addon_module.__file__).addons[0]
        assert type(loaded).__name__ == "AutocodeLogger"
        # Plain functions: mitmproxy calls them in its event loop; a coroutine per hook
        # would only add the cost of creating and awaiting it.
        for hook in ("requestheaders", "response", "error", "next_layer", "tcp_end"):
            assert callable(getattr(loaded, hook))
            assert not asyncio.iscoroutinefunction(getattr(loaded, hook)), hook
