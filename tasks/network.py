"""Egress control: the orchestrator is the workers' only gateway.

Orchestrator: forwarding sysctls, a complete iptables ruleset that REDIRECTs the workers'
TCP 80/443 to the transparent proxy and forwards nothing they start, IPv6 closed to them.
Workers: default route via the orchestrator, and an OUTPUT policy as a second wall.
Rulesets are rendered here, checked with `iptables-restore --test` on the host, loaded
atomically only when they changed or the live rules drifted, and restored at boot.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, server, systemd

from infra.operations import default_gateway, firewall_ruleset
from infra.render import as_file, digest, render

RULES_DIR = "/etc/autocode/iptables"
ROUTER_SYSCTLS = {
    "net.ipv4.ip_forward": 1,  # replies and bastion SSH to the workers pass through here
    "net.ipv4.conf.all.send_redirects": 0,  # never tell a worker of a shorter way out
    "net.ipv4.conf.default.send_redirects": 0,
    "net.ipv6.conf.all.forwarding": 0,
}


def _worker_facing_tcp_ports(data) -> list[int]:
    """What a worker may reach on the orchestrator over TCP."""
    return sorted({data.dns_port, data.mitmproxy_port, data.vault_port, data.nomad_rpc_port,
                   data.model_api_port})


@deploy("Network: orchestrator as gateway")
def orchestrator() -> None:
    data = host.data
    for key, value in ROUTER_SYSCTLS.items():
        server.sysctl(name=f"sysctl {key}", key=key, value=value, persist=True,
                      persist_file="/etc/sysctl.d/60-autocode-router.conf")
    _rulesets(
        v4=render("iptables/orchestrator.rules.v4.j2", worker_network=data.worker_network,
                  proxy_port=data.mitmproxy_port, dns_port=data.dns_port,
                  worker_tcp_ports=_worker_facing_tcp_ports(data)),
        v6=render("iptables/orchestrator.rules.v6.j2", worker_network6=data.worker_network6),
    )


@deploy("Network: worker egress")
def worker() -> None:
    data = host.data
    gateway = data.orchestrator_address
    default_gateway(name=f"Default route via {gateway}", gateway=gateway)
    unit = files.put(
        name="Unit autocode-gateway.service",
        src=as_file(render("network/autocode-gateway.service.j2", gateway=gateway)),
        dest="/etc/systemd/system/autocode-gateway.service", mode="644",
    )
    systemd.daemon_reload(name="Reload systemd units", _if=unit.did_change)
    systemd.service(name="Enable autocode-gateway", service="autocode-gateway.service",
                    enabled=True, running=True)
    _rulesets(
        v4=render("iptables/worker.rules.v4.j2", orchestrator_address=gateway,
                  dns_port=data.dns_port, ssh_port=data.get("ssh_port") or 22,
                  orchestrator_tcp_ports=_worker_facing_tcp_ports(data)),
        v6=render("iptables/worker.rules.v6.j2"),
    )


def _rulesets(v4: str, v6: str) -> None:
    files.directory(name=f"Folder {RULES_DIR}", path=RULES_DIR, user="root", group="root",
                    mode="750")
    for family, text in ((4, v4), (6, v6)):
        path = f"{RULES_DIR}/rules.v{family}"
        files.put(name=f"IPv{family} ruleset file", src=as_file(text), dest=path,
                  user="root", group="root", mode="640")
        firewall_ruleset(name=f"Load IPv{family} ruleset", path=path,
                         content_digest=digest(text), family=family)
    unit = files.put(
        name="Unit autocode-firewall.service",
        src=as_file(render("network/autocode-firewall.service.j2", rules_dir=RULES_DIR)),
        dest="/etc/systemd/system/autocode-firewall.service", mode="644",
    )
    systemd.daemon_reload(name="Reload systemd units", _if=unit.did_change)
    systemd.service(name="Enable autocode-firewall (restores the rules at boot)",
                    service="autocode-firewall.service", enabled=True, running=True)
