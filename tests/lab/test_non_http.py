"""Every connection a worker makes through the proxy is recorded whatever it carries, and
what is not HTTP is refused unless `proxy_non_http: allow`: raw bytes to 443, TLS around
something that is not HTTP, and a WebSocket, against a real listener outside the worker
segment that says what arrived."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import pytest

from infra.inventory_file import group_defaults
from settings.mitmproxy import Mitmproxy
from testing.deploy import changed_hosts
from testing.figures import record
from testing.traffic import remote_spool_records

pytestmark = pytest.mark.lab
ASSETS = Path(__file__).parent / "assets"
LOG = "/tmp/echo-listener.jsonl"
AGENT = group_defaults("workers")["service_user"]
SPOOL = Mitmproxy.spool_dir(group_defaults("orchestrator")["data_root"])
FIXTURE_TLS = "/opt/lab-internet/server"  # the fixture's certificate, for internet.lab
SNI = "internet.lab"


@pytest.fixture(scope="module")
def outside(lab, ssh, converged):
    """An echo listener on the internet host's spare address: raw or TLS on 443,
    WebSocket on 80."""
    spare = lab.internet_spare_addr
    ssh("internet", "cat > /tmp/listener.py", input=(ASSETS / "listener.py").read_text())
    ssh("internet", f"systemctl stop lab-echo 2>/dev/null; rm -f {LOG}; "
        f"systemd-run --unit=lab-echo python3 /tmp/listener.py {LOG} --bind {spare} "
        f"--echo 443 --cert {FIXTURE_TLS}.crt --key {FIXTURE_TLS}.key --websocket 80")
    for host in ("orchestrator", lab.workers[0].name):
        ssh(host, "cat > /tmp/probe.py", input=(ASSETS / "probe.py").read_text())
    time.sleep(0.5)
    yield spare
    ssh("internet", "systemctl stop lab-echo", check=False)


def probe(ssh, host, *args, user=None) -> dict:
    command = f"python3 /tmp/probe.py {shlex.join(args)}"
    if user:
        command = f"runuser -u {user} -- {command}"
    return json.loads(ssh(host, command).stdout)


def arrivals(ssh) -> list[dict]:
    return [json.loads(line) for line in
            ssh("internet", f"cat {LOG} 2>/dev/null || true").stdout.splitlines() if line]


def attempts(lab, ssh, spare) -> dict[str, dict]:
    """Each kind from worker1 as the agent, with a control straight from the orchestrator
    (not proxied) showing the listener answers; what the listener saw from the proxy."""
    kinds = {"raw bytes to 443": ("raw", spare, "443"),
             "TLS around non-HTTP to 443": ("tlsraw", spare, "443", SNI),
             "WebSocket on 80": ("ws", spare, "80")}
    orchestrator_side = lab.orchestrator.uplink_addr  # where proxied connections come from
    out = {}
    for name, args in kinds.items():
        if args[0] != "tlsraw":  # the orchestrator does not trust the fixture CA itself
            control = probe(ssh, "orchestrator", *args)
            assert control["ok"], f"control for {name} failed, the test proves nothing"
        before = len(arrivals(ssh))
        got = probe(ssh, lab.workers[0].name, *args, user=AGENT)
        time.sleep(0.5)
        seen = [a for a in arrivals(ssh)[before:] if a["peer"] == orchestrator_side]
        out[name] = {"worker": got, "listener": seen}
    return out


def spooled(ssh, predicate, want) -> list[dict]:
    return remote_spool_records(ssh, SPOOL, predicate, want)


def test_non_http_is_refused_by_default_and_recorded(lab, ssh, outside):
    spare = outside
    started = time.time()
    results = attempts(lab, ssh, spare)
    for name, result in results.items():
        print(f"[non-HTTP, block] {name}: worker {result['worker']}, listener saw "
              f"{result['listener']}")
        assert not result["worker"]["ok"], f"{name} got through: {result}"
        # At most the proxy's own TLS handshake with the server, never a byte of payload.
        assert all(a.get("bytes", 0) == 0 and a["proto"] != "websocket"
                   for a in result["listener"]), result
    worker = lab.workers[0].name

    def mine(r):
        return r["worker_id"] == worker and r.get("port") in (80, 443) and (
            r.get("host") in (spare, SNI) or spare in (r.get("url") or "")) and \
            r["@timestamp"] >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started - 1))

    found = spooled(ssh, mine, want=3)
    tcp = [r for r in found if r["kind"] == "tcp"]
    upgrades = [r for r in found if r["kind"] == "http"]
    assert {(r["sni"], r["verdict"]) for r in tcp} == {(None, "blocked"), (SNI, "blocked")}
    assert [(r["status"], r["verdict"]) for r in upgrades] == [(403, "blocked")]
    record("non-HTTP attempts refused and recorded (block)", f"{len(results)} of 3")


def test_allow_relays_non_http_and_records_it(lab, ssh, outside, pyinfra):
    spare = outside
    applied, _ = pyinfra.run("--data", "proxy_non_http=allow")
    assert "mitmproxy | Traffic logger configuration" in changed_hosts(applied)
    try:
        started = time.time()
        results = attempts(lab, ssh, spare)
        for name, result in results.items():
            print(f"[non-HTTP, allow] {name}: worker {result['worker']}, listener saw "
                  f"{result['listener']}")
            assert result["worker"]["ok"] and "DIFFERENT" not in result["worker"]["detail"], \
                result
        assert [a["bytes"] for a in results["raw bytes to 443"]["listener"]] == [208]
        tls_seen = results["TLS around non-HTTP to 443"]["listener"]
        assert [(a["proto"], a["bytes"]) for a in tls_seen] == [("tls", 208)]
        assert [(a["messages"], a["bytes"]) for a in results["WebSocket on 80"]["listener"]
                ] == [(3, 11)]
        worker = lab.workers[0].name
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started - 1))
        found = spooled(ssh, lambda r: r["worker_id"] == worker and r["@timestamp"] >= since
                        and r["kind"] in ("tcp", "websocket"), want=3)
        by_kind = {(r["kind"], r.get("sni")): r for r in found}
        raw, tls, ws = by_kind[("tcp", None)], by_kind[("tcp", SNI)], by_kind[
            ("websocket", None)]
        for r in (raw, tls):
            assert r["verdict"] == "allowed" and r["port"] == 443
            assert (r["bytes_from_client"], r["bytes_from_server"]) == (208, 208)
        assert (ws["messages_from_client"], ws["messages_from_server"]) == (3, 3)
        record("non-HTTP relayed and recorded (allow)", "3 of 3")
    finally:
        restored, _ = pyinfra.run()
        assert "mitmproxy | Traffic logger configuration" in changed_hosts(restored)
    again, _ = pyinfra.run()
    assert changed_hosts(again) == {}
