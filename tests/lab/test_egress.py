"""Egress control end to end: every worker request is seen, attributed and kept, and
every way around the proxy fails — with the worker's own firewall, and without it."""

from __future__ import annotations

import json
import shlex
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from infra.inventory_file import group_defaults
from settings.mitmproxy import AGENT_ENV, CA_CERT, CA_KEY, WORKER_CA, Mitmproxy
from testing.deploy import changed_hosts
from testing.figures import record
from testing.traffic import remote_spool_records

pytestmark = pytest.mark.lab
PROBE = (Path(__file__).parent / "assets" / "probe.py").read_text()
SPOOL = Mitmproxy.spool_dir(group_defaults("orchestrator")["data_root"])
SECRET = "sk-planted-" + uuid.uuid4().hex
AGENT = group_defaults("workers")["service_user"]  # the account agents run as


@pytest.fixture(scope="module")
def workers(lab) -> list[str]:
    return [m.name for m in lab.workers]


@pytest.fixture(scope="module")
def probe(lab, ssh, converged, workers):
    for host in ["orchestrator", *workers]:
        ssh(host, "cat > /tmp/probe.py", input=PROBE)

    def run(host: str, *args: str, user: str | None = None) -> dict:
        cmd = f"python3 /tmp/probe.py {shlex.join(args)}"
        if user:
            cmd = f"runuser -u {user} -- {cmd}"
        return json.loads(ssh(host, cmd).stdout)
    return run


def spool_records(ssh, predicate, want: int, timeout: float = 15) -> list[dict]:
    return remote_spool_records(ssh, SPOOL, predicate, want, timeout)


def test_worker_requests_are_logged_with_identity_and_redacted(lab, ssh, probe, workers):
    inet = lab.internet.uplink_addr
    marker = uuid.uuid4().hex
    for host in workers:
        base = f"{inet}/probe/{marker}/{host}"
        out = ssh(host, f"runuser -u {AGENT} -- curl -sS --fail -H 'Authorization: Bearer "
                  f"{SECRET}' http://{base}/curl-http").stdout
        # The request reached the outside untouched: redaction is for the log only.
        assert json.loads(out)["headers"]["Authorization"] == f"Bearer {SECRET}"
        ssh(host, f"runuser -u {AGENT} -- curl -sS --fail -o /dev/null https://{base}/curl-https")
        got = probe(host, "http", f"https://{base}/python", user=AGENT)
        assert got["ok"], got

    records = spool_records(ssh, lambda r: marker in r.get("url", ""), want=3 * len(workers))
    assert len(records) == 3 * len(workers)
    for r in records:
        host = r["url"].split(marker + "/")[1].split("/")[0]
        assert r["worker_id"] == host
        assert r["client_ip"] == lab.machine(host).worker_addr
        assert (r["method"], r["status"]) == ("GET", 200)
        assert r["scheme"] == ("http" if r["url"].endswith("curl-http") else "https")
        assert r["response_bytes"] > 0 and r["duration_ms"] >= 0
        if r["url"].endswith("curl-http"):
            assert r["request_headers"]["authorization"] != f"Bearer {SECRET}"
    spool = ssh("orchestrator", f"cat {SPOOL}/segment-*.jsonl").stdout
    assert SECRET not in spool
    record("requests logged (4 workers x 3 clients)", f"{len(records)} of {3 * len(workers)}")


def test_pip_download_through_the_proxy(ssh):
    started = time.time()
    ssh("worker1", "rm -rf /tmp/pipvenv /tmp/dl")
    ssh("worker1", f"runuser -u {AGENT} -- sh -c 'set -a; . {AGENT_ENV}; "
        "python3 -m venv /tmp/pipvenv && /tmp/pipvenv/bin/pip download --quiet "
        "--no-deps -d /tmp/dl six==1.16.0'")
    assert ssh("worker1", "ls /tmp/dl").stdout.strip() == "six-1.16.0-py2.py3-none-any.whl"
    records = spool_records(
        ssh, lambda r: r["worker_id"] == "worker1" and "six" in r.get("url", "")
        and r["@timestamp"] >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started - 5)),
        want=2)
    hosts = {r["host"] for r in records if r["status"] == 200}
    assert {"pypi.org", "files.pythonhosted.org"} <= hosts, records


@pytest.fixture
def listeners(lab, ssh):
    """Something really listening where a worker must not get: a port standing in for
    Elasticsearch on the orchestrator, and a port on the control machine."""
    ssh("orchestrator", "systemd-run --unit=lab-fake-es python3 -m http.server 9200")
    server = socket.create_server((lab.control_addr, 0))
    server.settimeout(0.5)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.sendall(b"control-machine\n")
            conn.close()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    time.sleep(0.5)
    yield {"control_port": str(server.getsockname()[1])}
    stop.set()
    thread.join(timeout=2)
    server.close()
    ssh("orchestrator", "systemctl stop lab-fake-es", check=False)


def bypass_attempts(lab, control_port: str) -> list[tuple[str, tuple[str, ...], tuple]]:
    """(attempt, probe arguments from a worker, the same target as seen from the
    orchestrator, which must succeed: proof that the target is alive)."""
    inet, inet6 = lab.internet.uplink_addr, lab.internet.uplink_addr6
    orch = lab.orchestrator.worker_addr
    return [
        ("TCP to another port of the internet host", ("tcp", inet, "8081"),
         ("tcp", inet, "8081")),
        ("UDP to the internet host", ("udp", inet, "9999"), ("udp", inet, "9999")),
        ("DNS straight to the internet host", ("dns", inet, "example.com"),
         ("dns", inet, "example.com")),
        ("IPv6 to the internet host", ("http", f"http://[{inet6}]/"),
         ("http", f"http://[{inet6}]/")),
        ("Elasticsearch's port on the orchestrator", ("tcp", orch, "9200"),
         ("tcp", orch, "9200")),
        ("SSH on the orchestrator", ("tcp", orch, "22"), ("tcp", orch, "22")),
        ("a port on the control machine", ("tcp", lab.control_addr, control_port),
         ("tcp", lab.control_addr, control_port)),
    ]


def _attempt_all(lab, ssh, probe, control_port, user, label):
    failures, tried = [], []
    for name, from_worker, control in bypass_attempts(lab, control_port):
        alive = probe("orchestrator", *control)
        assert alive["ok"], f"control for '{name}' failed, the test proves nothing: {alive}"
        got = probe("worker1", *from_worker, user=user)
        tried.append(f"{name}: {'GOT THROUGH' if got['ok'] else 'blocked'} ({got['detail']})")
        if got["ok"]:
            failures.append(name)
    ping = ssh("worker1", f"{'runuser -u ' + user + ' -- ' if user else ''}"
               f"ping -c1 -W2 {lab.internet.uplink_addr}", check=False)
    assert ssh("orchestrator", f"ping -c1 -W2 {lab.internet.uplink_addr}", check=False
               ).returncode == 0
    verdict = "GOT THROUGH" if ping.returncode == 0 else "blocked"
    tried.append(f"ICMP to the internet host: {verdict}")
    if ping.returncode == 0:
        failures.append("ICMP")
    for line in tried:
        print(f"[{label}] {line}")
    return failures, tried


def test_bypass_attempts_fail_as_the_agent(lab, ssh, probe, listeners):
    failures, tried = _attempt_all(lab, ssh, probe, listeners["control_port"], AGENT,
                                   "agent user, both firewalls")
    record("bypass attempts blocked (agent user)", f"{len(tried) - len(failures)} of {len(tried)}")
    assert not failures


def test_bypass_attempts_fail_without_the_workers_own_firewall(lab, ssh, probe, listeners,
                                                               pyinfra):
    """Root on a worker can drop its own rules; the orchestrator must hold alone. Then the
    deploy must report exactly that drift and repair it."""
    ssh("worker1", "iptables -P OUTPUT ACCEPT; iptables -F; ip6tables -P OUTPUT ACCEPT; "
        "ip6tables -P INPUT ACCEPT; ip6tables -F")
    failures, tried = _attempt_all(lab, ssh, probe, listeners["control_port"], None,
                                   "root, worker firewall flushed")
    # A route straight past the orchestrator: claim the internet host is on-link. Only
    # that host, and undone in the same command, so SSH to the worker is never cut.
    inet = lab.internet.uplink_addr
    onlink = ssh("worker1", f"ip route add {inet}/32 dev eth0; python3 /tmp/probe.py tcp "
                 f"{inet} 8081; ip route del {inet}/32 dev eth0")
    got = json.loads(onlink.stdout)
    tried.append(f"on-link route to the internet host: {got}")
    assert not got["ok"], got
    record("bypass attempts blocked (root, no worker firewall)",
           f"{len(tried) - len(failures)} of {len(tried)}")
    assert not failures

    plan, _ = pyinfra.run("--dry")
    assert changed_hosts(plan) == {
        "Network: worker egress | Load IPv4 ruleset": {"worker1"},
        "Network: worker egress | Load IPv6 ruleset": {"worker1"},
    }
    repaired, _ = pyinfra.run()
    assert changed_hosts(repaired) == changed_hosts(plan)
    assert "REJECT" in ssh("worker1", "iptables -S OUTPUT").stdout
    again, _ = pyinfra.run()
    assert changed_hosts(again) == {}


def test_orchestrator_firewall_drift_is_repaired(lab, ssh, probe, pyinfra):
    ssh("orchestrator", "iptables -t nat -F PREROUTING")
    plan, _ = pyinfra.run("--dry")
    assert changed_hosts(plan) == {
        "Network: orchestrator as gateway | Load IPv4 ruleset": {"orchestrator"}}
    pyinfra.run()
    got = probe("worker2", "http", f"http://{lab.internet.uplink_addr}/after-repair", user=AGENT)
    assert got["ok"], got
    assert spool_records(ssh, lambda r: r.get("url", "").endswith("/after-repair"), want=1)


def test_proxy_restart_keeps_the_ca_and_reapply_changes_nothing(ssh, pyinfra, workers):
    cert = CA_CERT
    before = ssh("orchestrator", f"sha256sum {cert}").stdout.split()[0]
    ssh("orchestrator", "systemctl restart autocode-mitmproxy && "
        "systemctl is-active autocode-mitmproxy")
    assert ssh("orchestrator", f"sha256sum {cert}").stdout.split()[0] == before
    for host in workers:
        assert ssh(host, f"sha256sum {WORKER_CA}").stdout.split()[0] == before
    key_mode = ssh("orchestrator", f"stat -c '%U %a' {CA_KEY}")
    assert key_mode.stdout.split() == ["autocode-proxy", "600"]
    result, _ = pyinfra.run()
    assert changed_hosts(result) == {}
