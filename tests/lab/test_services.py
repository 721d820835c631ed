"""The generic systemd unit operation on real hosts: a service restarts when, and only
when, its unit or something it reads changed, including changes an earlier run wrote but
never got to restart for, and files repaired after someone edited them."""

from __future__ import annotations

import pytest

from infra.operations import UNIT_MARKERS
from settings.mitmproxy import TRAFFIC_CONFIG
from testing.deploy import changed_hosts
from testing.figures import record

pytestmark = pytest.mark.lab
PROXY = "autocode-mitmproxy.service"


def main_pid(ssh, unit: str) -> str:
    pid = ssh("orchestrator", f"systemctl show -P MainPID {unit}").stdout.strip()
    assert pid not in ("", "0"), f"{unit} is not running"
    return pid


def test_a_run_that_stopped_before_the_restart_is_finished_next_time(ssh, pyinfra, converged):
    """As if the last apply wrote new inputs and died before restarting: the marker of
    what the proxy was started with no longer matches."""
    before = main_pid(ssh, PROXY)
    ssh("orchestrator", f"echo interrupted > {UNIT_MARKERS}/{PROXY}")
    plan, _ = pyinfra.run("--dry")
    assert changed_hosts(plan) == {f"mitmproxy | {PROXY}": {"orchestrator"}}
    applied, _ = pyinfra.run()
    assert changed_hosts(applied) == changed_hosts(plan)
    assert main_pid(ssh, PROXY) != before
    again, _ = pyinfra.run()
    assert changed_hosts(again) == {}


def test_an_edited_config_is_repaired_and_the_services_reading_it_restart(ssh, pyinfra,
                                                                          converged):
    proxy, shipper = main_pid(ssh, PROXY), main_pid(ssh, "autocode-traffic-shipper.service")
    ssh("orchestrator", f"sed -i 's/fail_closed: true/fail_closed: false/' {TRAFFIC_CONFIG}")
    plan, _ = pyinfra.run("--dry")
    assert changed_hosts(plan) == {
        "mitmproxy | Traffic logger configuration": {"orchestrator"},
        f"mitmproxy | {PROXY}": {"orchestrator"},
        "mitmproxy | autocode-traffic-shipper.service": {"orchestrator"},
    }
    applied, _ = pyinfra.run()
    assert changed_hosts(applied) == changed_hosts(plan)
    assert "fail_closed: true" in ssh("orchestrator", f"cat {TRAFFIC_CONFIG}").stdout
    assert main_pid(ssh, PROXY) != proxy
    assert main_pid(ssh, "autocode-traffic-shipper.service") != shipper
    again, _ = pyinfra.run()
    assert changed_hosts(again) == {}


def test_an_edited_unit_file_is_rewritten_and_a_stopped_service_started(ssh, pyinfra,
                                                                       converged):
    ssh("worker2", "echo '# edited' >> /etc/systemd/system/autocode-gateway.service && "
        "systemctl daemon-reload")
    ssh("orchestrator", "systemctl stop autocode-traffic-shipper.service")
    plan, _ = pyinfra.run("--dry")
    assert changed_hosts(plan) == {
        "Network: worker egress | Unit autocode-gateway.service": {"worker2"},
        "mitmproxy | autocode-traffic-shipper.service": {"orchestrator"},
    }
    applied, _ = pyinfra.run()
    assert changed_hosts(applied) == changed_hosts(plan)
    assert "# edited" not in ssh("worker2", "cat /etc/systemd/system/autocode-gateway.service"
                                 ).stdout
    main_pid(ssh, "autocode-traffic-shipper.service")
    again, _ = pyinfra.run()
    assert changed_hosts(again) == {}


def test_shipper_restarts_promptly_while_elasticsearch_is_unreachable(ssh, converged):
    """No Elasticsearch in the lab yet: the shipper backs off, and a restart must not wait
    out TimeoutStopSec and end in SIGKILL."""
    shipper = "autocode-traffic-shipper.service"
    assert ssh("orchestrator", "curl -s -m 2 http://127.0.0.1:9200/ || echo unreachable"
               ).stdout.strip() == "unreachable"
    before = main_pid(ssh, shipper)
    # It is backing off: the spool has the requests of earlier tests, and nowhere to go.
    ssh("orchestrator", f"for i in $(seq 50); do journalctl -u {shipper} -n 20 --no-pager | "
        "grep -q 'not accepting yet' && exit 0; sleep 0.2; done; exit 1")
    timed_restart = ("import subprocess, time; t = time.monotonic(); "
                     f"subprocess.run(['systemctl', 'restart', '{shipper}'], check=True); "
                     "print(time.monotonic() - t)")
    since = ssh("orchestrator", "sleep 1; date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    seconds = float(ssh("orchestrator", f'python3 -c "{timed_restart}"').stdout)
    record("shipper restart with Elasticsearch unreachable", f"{seconds:.2f} s")
    assert seconds < 5
    assert main_pid(ssh, shipper) != before
    log = ssh("orchestrator", f"journalctl -u {shipper} --since '{since}' --no-pager").stdout
    assert "stopped mid-batch" in log
    assert "SIGKILL" not in log and "timed out" not in log
