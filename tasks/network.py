"""Egress control: the orchestrator is the workers' only gateway.

Orchestrator: forwarding sysctls, a complete iptables ruleset that REDIRECTs the workers'
TCP 80/443 to the transparent proxy and forwards nothing they start, IPv6 closed to them.
Workers: default route via the orchestrator, and an OUTPUT policy as a second wall.
Rulesets are rendered here, checked with `iptables-restore --test` on the host, loaded
atomically only when they changed or the live rules drifted, and restored at boot.
What workers may reach on the orchestrator is what the components declare
(`Component.worker_ports`), the same list on both ends.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from infra.component import Component
from infra.components import Catalogue
from infra.facts import management_networks
from infra.operations import (
    default_gateway,
    digest,
    directory,
    file_content,
    firewall_ruleset,
    sysctls,
    systemd_unit,
)
from infra.render import render
from settings.dns import Dns
from settings.inventory import Addresses
from settings.mitmproxy import Mitmproxy
from settings.network import Network

RULES_DIR = "/etc/autocode/iptables"
ROUTER_SYSCTLS = {
    "net.ipv4.ip_forward": 1,  # replies and bastion SSH to the workers pass through here
    "net.ipv4.conf.all.send_redirects": 0,  # never tell a worker of a shorter way out
    "net.ipv4.conf.default.send_redirects": 0,
    "net.ipv6.conf.all.forwarding": 0,
}

COMPONENT = Component(name="network", settings=Network)


@deploy("Network: orchestrator as gateway")
def orchestrator(catalogue: Catalogue) -> None:
    network, data = Network.of(host), host.data.dict()
    sysctls(name="Router sysctls", values=ROUTER_SYSCTLS,
            persist_file="/etc/sysctl.d/60-autocode-router.conf")
    _rulesets(
        v4=render("network/orchestrator.rules.v4.j2", worker_network=network.worker_network,
                  proxy_port=Mitmproxy.of(host).mitmproxy_port, dns_port=Dns.of(host).dns_port,
                  worker_tcp_ports=catalogue.worker_ports(data),
                  management_tcp_ports=catalogue.management_ports(data),
                  management_networks=management_networks(network.management_networks),
                  private_tcp_ports=catalogue.private_ports(data)),
        v6=render("network/orchestrator.rules.v6.j2",
                  worker_network6=network.worker_network6),
    )


@deploy("Network: worker egress")
def worker(catalogue: Catalogue) -> None:
    addresses = Addresses.of(host)
    gateway = addresses.orchestrator_address
    default_gateway(name=f"Default route via {gateway}", gateway=gateway)
    systemd_unit(name="Unit autocode-gateway.service", unit="autocode-gateway.service",
                 text=render("network/autocode-gateway.service.j2", gateway=gateway))
    _rulesets(
        v4=render("network/worker.rules.v4.j2", orchestrator_address=gateway,
                  worker_network=Network.of(host).worker_network,
                  dns_port=Dns.of(host).dns_port, ssh_port=addresses.ssh_port or 22,
                  orchestrator_tcp_ports=catalogue.worker_ports(host.data.dict())),
        v6=render("network/worker.rules.v6.j2"),
    )


def _rulesets(v4: str, v6: str) -> None:
    files = {f"{RULES_DIR}/rules.v{family}": text for family, text in ((4, v4), (6, v6))}
    batch = (RULES_DIR, *files)
    directory(name=f"Folder {RULES_DIR}", path=RULES_DIR, user="root", group="root",
              mode="750", batch=batch)
    for family, (path, text) in zip((4, 6), files.items(), strict=True):
        file_content(name=f"IPv{family} ruleset file", path=path, text=text, mode="640",
                     batch=batch)
        firewall_ruleset(name=f"Load IPv{family} ruleset", path=path,
                         content_digest=digest(text), family=family)
    # Restores the last good rulesets at boot; restarting it reloads the same rules.
    systemd_unit(name="Unit autocode-firewall.service", unit="autocode-firewall.service",
                 text=render("network/autocode-firewall.service.j2", rules_dir=RULES_DIR))
