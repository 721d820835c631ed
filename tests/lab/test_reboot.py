"""Hosts survive reboots with no re-apply: `systemctl reboot` inside a host, and a
power-off followed by `python -m lab up`. Between two boots the lab empties the host's
network namespace as a VM's reboot would (firewall, forwarding, a worker's default route),
so what comes back is what the host's own boot restores."""

from __future__ import annotations

import time
import uuid

import pytest

from infra.inventory_file import group_defaults
from settings.mitmproxy import CA_CERT, Mitmproxy
from testing.deploy import changed_hosts
from testing.figures import record
from testing.traffic import remote_spool_records
from testing.worker_logs import log_as_worker, received, wait_for

pytestmark = pytest.mark.lab
BOOT_MARKER = "/run/autocode-lab-before-reboot"  # /run is a tmpfs: gone after a boot
AGENT = group_defaults("workers")["service_user"]
ORCHESTRATOR_UNITS = ("dnsmasq", "autocode-firewall", "autocode-mitmproxy",
                      "autocode-traffic-shipper", "openbao", "autocode-vault-backup.timer",
                      "rsyslog")
UNSEAL_OP = "Secrets server | Vault initialised and unsealed"
WORKER_UNITS = ("autocode-firewall", "autocode-gateway", "autocode-worker", "rsyslog")


def wait_until_booted(lab, host: str, started: float, timeout: float = 120) -> float:
    """Seconds from `started` (monotonic) until the host answers SSH after a new boot and
    systemd has finished starting it."""
    while time.monotonic() - started < timeout:
        proc = lab.ssh(host, f"test ! -e {BOOT_MARKER} && systemctl is-system-running --wait",
                       timeout=60)
        if proc.returncode == 0 or proc.stdout.strip() == "degraded":
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"{host} did not come back within {timeout:.0f} s")


def state_after_boot(ssh, lab, host: str) -> dict:
    m = lab.machine(host)
    units = ORCHESTRATOR_UNITS if m.role == "orchestrator" else WORKER_UNITS
    out = {"units": ssh(host, f"systemctl is-active {' '.join(units)}; true"
                        ).stdout.split(),
           "failed": ssh(host, "systemctl --failed --no-legend --plain").stdout.strip()}
    if m.role == "orchestrator":
        out["forwarding"] = ssh(host, "sysctl -n net.ipv4.ip_forward "
                                "net.ipv4.conf.all.send_redirects").stdout.split()
        out["redirect"] = "REDIRECT" in ssh(host, "iptables -t nat -S PREROUTING").stdout
        out["forward policy"] = ssh(host, "iptables -S FORWARD").stdout.splitlines()[0]
        out["ca"] = ssh(host, f"sha256sum {CA_CERT}").stdout.split()[0]
    else:
        out["route"] = ssh(host, "ip -4 route show default").stdout.strip()
        out["output policy"] = ssh(host, "iptables -S OUTPUT").stdout.splitlines()[0]
        out["isolation"] = f"-s {lab.cfg.worker_net} -j DROP" in ssh(host,
                                                                    "iptables -S INPUT").stdout
    return out


def expected(lab, host: str, ca: str) -> dict:
    m = lab.machine(host)
    if m.role == "orchestrator":
        return {"units": ["active"] * len(ORCHESTRATOR_UNITS), "failed": "",
                "forwarding": ["1", "0"], "redirect": True, "forward policy": "-P FORWARD DROP",
                "ca": ca}
    return {"units": ["active"] * len(WORKER_UNITS), "failed": "",
            "route": f"default via {lab.orchestrator.worker_addr} dev eth0",
            "output policy": "-P OUTPUT DROP", "isolation": True}


def log_line_filed(lab, ssh, worker: str) -> bool:
    """A line the worker runtime logs now is filed under the worker on the orchestrator."""
    marker = f"after-boot-{uuid.uuid4().hex[:8]}"
    log_as_worker(ssh, worker, [marker])
    return bool(wait_for(lambda: received(ssh, lab.orchestrator.name, worker, marker),
                         timeout=10, interval=0.3))


def proxied_and_recorded(lab, ssh, worker: str) -> dict:
    url = f"https://{lab.internet.uplink_addr}/after-boot/{uuid.uuid4().hex}"
    ssh(worker, f"runuser -u {AGENT} -- curl -sS --fail -o /dev/null {url}")
    spool = Mitmproxy.spool_dir(group_defaults("orchestrator")["data_root"])
    found = remote_spool_records(ssh, spool, lambda r: r.get("url") == url, want=1)
    assert found, f"the request from {worker} after the boot is not in the spool"
    return found[0]


@pytest.fixture(scope="module")
def ca_before(ssh, converged) -> str:
    return ssh("orchestrator", f"sha256sum {CA_CERT}").stdout.split()[0]


def test_reboot_of_the_orchestrator_and_a_worker_restores_everything(lab, ssh, pyinfra,
                                                                     ca_before):
    hosts = [lab.orchestrator.name, lab.workers[0].name]
    started = {}
    for host in hosts:
        ssh(host, f"touch {BOOT_MARKER}")
        started[host] = time.monotonic()
        lab.ssh(host, "systemctl reboot")  # the connection may drop as it goes down
    # Logged by a worker that stays up while the orchestrator reboots: queued, then filed.
    bystander = lab.workers[2].name
    marker = f"during-reboot-{uuid.uuid4().hex[:8]}"
    lines = [f"{marker}-{n:03d}" for n in range(100)]
    log_as_worker(ssh, bystander, lines)
    for host in hosts:
        seconds = wait_until_booted(lab, host, started[host])
        record(f"reboot: {host} up again after", f"{seconds:.1f} s")
    for host in hosts:
        assert state_after_boot(ssh, lab, host) == expected(lab, host, ca_before), host
    got = proxied_and_recorded(lab, ssh, lab.workers[0].name)
    assert got["worker_id"] == lab.workers[0].name and got["status"] == 200
    assert log_line_filed(lab, ssh, lab.workers[0].name)
    wait_for(lambda: len(set(received(ssh, lab.orchestrator.name, bystander, marker))) >= 100,
             timeout=60, interval=0.5)
    filed = received(ssh, lab.orchestrator.name, bystander, marker)
    record("reboot: lines logged by worker3 while the orchestrator rebooted, sent/filed/doubled",
           f"{len(lines)}/{len(set(filed))}/{len(filed) - len(set(filed))}")
    assert sorted(set(filed)) == lines
    # Vault comes back sealed (its keys live on the control machine only): a dry run says
    # so, an apply unseals it and changes nothing else, and then there is nothing to do.
    sealed = ssh(lab.orchestrator.name, "curl -s --cacert /etc/autocode/pki/platform-ca.crt "
                 "https://127.0.0.1:8200/v1/sys/seal-status").stdout
    assert '"sealed":true' in sealed
    plan, _ = pyinfra.run("--dry")
    assert changed_hosts(plan).get(UNSEAL_OP) == {lab.orchestrator.name}
    result, _ = pyinfra.run()
    assert {op["name"]: set(op["success"]) for op in result["results"]["operations"]
            if op["success"]} == {UNSEAL_OP: {lab.orchestrator.name}}
    result, _ = pyinfra.run()
    assert changed_hosts(result) == {}


def test_power_off_then_lab_up_restores_everything(lab, ssh, pyinfra, ca_before):
    worker = lab.workers[1].name
    ssh(worker, f"touch {BOOT_MARKER}")
    lab.ssh(worker, "systemctl poweroff")
    deadline = time.monotonic() + 60
    while lab.status()[worker] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert lab.status()[worker] is None, f"{worker} did not power off"
    started = time.monotonic()
    lab.up()
    record(f"power-off + lab up: {worker} up again after",
           f"{wait_until_booted(lab, worker, started):.1f} s")
    assert state_after_boot(ssh, lab, worker) == expected(lab, worker, ca_before)
    got = proxied_and_recorded(lab, ssh, worker)
    assert got["worker_id"] == worker
    assert log_line_filed(lab, ssh, worker)
    result, _ = pyinfra.run()
    assert changed_hosts(result) == {}
