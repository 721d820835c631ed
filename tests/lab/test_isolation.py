"""Workers are isolated from each other: on the worker segment a worker talks only to the
orchestrator, in both directions, whatever one of them does to its own firewall.

A real listener runs on each worker of a pair; every attempt has a control from the
orchestrator that reaches the same listener, so a dead listener cannot make a test pass,
and the listener's own log says what arrived."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from infra.inventory_file import group_defaults
from testing.deploy import changed_hosts
from testing.figures import record

pytestmark = pytest.mark.lab
ASSETS = Path(__file__).parent / "assets"
TCP_PORTS, UDP_PORT = ("80", "443", "8080"), "9999"
LOG = "/tmp/listener.jsonl"
AGENT = group_defaults("workers")["service_user"]


@pytest.fixture(scope="module")
def pair(lab, ssh, converged):
    """worker1 and worker2, each with the probe and a listener that logs what arrives."""
    a, b = lab.workers[0], lab.workers[1]
    for m in (lab.orchestrator, a, b):
        ssh(m.name, "cat > /tmp/probe.py", input=(ASSETS / "probe.py").read_text())
    for m in (a, b):
        ssh(m.name, "cat > /tmp/listener.py", input=(ASSETS / "listener.py").read_text())
        ssh(m.name, f"systemctl stop lab-listener 2>/dev/null; rm -f {LOG}; "
            f"systemd-run --unit=lab-listener python3 /tmp/listener.py {LOG} "
            f"--tcp {','.join(TCP_PORTS)} --udp {UDP_PORT}")
    yield a, b
    for m in (a, b):
        ssh(m.name, "systemctl stop lab-listener", check=False)


def probe(ssh, host, *args, user=None) -> dict:
    command = f"python3 /tmp/probe.py {shlex.join(args)}"
    if user:
        command = f"runuser -u {user} -- {command}"
    return json.loads(ssh(host, command).stdout)


def arrivals(ssh, host) -> list[dict]:
    text = ssh(host, f"cat {LOG} 2>/dev/null || true").stdout
    return [json.loads(line) for line in text.splitlines() if line]


def attempts(ssh, lab, source, target, user) -> tuple[list[str], list[str]]:
    """Every kind of contact from `source` to `target`, each next to its control."""
    got_through, tried = [], []
    checks = [(("tcp", target.worker_addr, port), f"TCP {port}") for port in TCP_PORTS]
    checks.append((("udp", target.worker_addr, UDP_PORT), f"UDP {UDP_PORT}"))
    for args, name in checks:
        control = probe(ssh, "orchestrator", *args)
        assert control["ok"] and "listener" in control["detail"], \
            f"control from the orchestrator to {target.name} {name} failed: {control}"
        got = probe(ssh, source.name, *args, user=user)
        tried.append(f"{source.name} -> {target.name} {name}: "
                     f"{'GOT THROUGH' if got['ok'] else 'blocked'} ({got['detail']})")
        if got["ok"]:
            got_through.append(name)
    prefix = f"runuser -u {user} -- " if user else ""
    assert ssh("orchestrator", f"ping -c1 -W2 {target.worker_addr}", check=False
               ).returncode == 0
    ping = ssh(source.name, f"{prefix}ping -c1 -W2 {target.worker_addr}", check=False)
    tried.append(f"{source.name} -> {target.name} ICMP echo: "
                 f"{'GOT THROUGH' if ping.returncode == 0 else 'blocked'}")
    if ping.returncode == 0:
        got_through.append("ICMP")
    # What reached the listener from the source, in its own words.
    seen = [e for e in arrivals(ssh, target.name) if e["peer"] == source.worker_addr]
    got_through += [f"listener saw {e}" for e in seen]
    return got_through, tried


def test_workers_cannot_reach_each_other_as_the_agent(lab, ssh, pair):
    a, b = pair
    failures, tried = [], []
    for source, target in ((a, b), (b, a)):
        through, lines = attempts(ssh, lab, source, target, AGENT)
        failures += through
        tried += lines
    print("\n".join(f"[isolation, agent] {line}" for line in tried))
    record("worker-to-worker attempts blocked (agent)",
           f"{len(tried) - len(failures)} of {len(tried)}")
    assert not failures


def test_a_worker_without_its_own_firewall_still_reaches_no_other(lab, ssh, pair, pyinfra):
    """Root on worker1 flushes its rules and even routes worker2 through the orchestrator:
    worker2's own rules and the orchestrator hold. Then the deploy repairs worker1."""
    a, b = pair
    ssh(a.name, "iptables -P OUTPUT ACCEPT; iptables -P INPUT ACCEPT; iptables -F; "
        "ip6tables -P OUTPUT ACCEPT; ip6tables -P INPUT ACCEPT; ip6tables -F")
    failures, tried = [], []
    for source, target in ((a, b), (b, a)):
        through, lines = attempts(ssh, lab, source, target, None)
        failures += through
        tried += lines
    # Past the segment: ask the orchestrator to forward to worker2 (and undo it at once).
    orch = lab.orchestrator.worker_addr
    routed = json.loads(ssh(a.name, f"ip route add {b.worker_addr}/32 via {orch}; "
                            f"python3 /tmp/probe.py tcp {b.worker_addr} 80; "
                            f"ip route del {b.worker_addr}/32 via {orch}").stdout)
    tried.append(f"{a.name} -> {b.name} TCP 80 routed via the orchestrator: {routed}")
    if routed["ok"]:
        failures.append("routed via the orchestrator")
    failures += [f"listener saw {e}" for e in arrivals(ssh, b.name)
                 if e["peer"] == a.worker_addr]
    print("\n".join(f"[isolation, root, worker1 firewall flushed] {line}" for line in tried))
    record("worker-to-worker attempts blocked (root, no firewall)",
           f"{len(tried) - len(failures)} of {len(tried)}")
    assert not failures

    plan, _ = pyinfra.run("--dry")
    assert changed_hosts(plan) == {
        "Network: worker egress | Load IPv4 ruleset": {a.name},
        "Network: worker egress | Load IPv6 ruleset": {a.name},
    }
    pyinfra.run()
    again, _ = pyinfra.run()
    assert changed_hosts(again) == {}
