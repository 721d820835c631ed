"""DNS: a forwarder on the orchestrator (dnsmasq) that logs every query the workers make,
and workers that resolve only through it."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import Link
from pyinfra.operations import apt, files, server, systemd

from infra.render import as_file, render

DNSMASQ_CONF = "/etc/dnsmasq.d/autocode.conf"
# As Debian's init script runs it, so the check sees what the service will load.
DNSMASQ_TEST = ("dnsmasq --test -C /etc/dnsmasq.conf "
                "-7 /etc/dnsmasq.d,.dpkg-dist,.dpkg-old,.dpkg-new")
RESOLVED_STUB = "../run/systemd/resolve/stub-resolv.conf"


@deploy("DNS forwarder")
def orchestrator() -> None:
    data = host.data
    log_dir = f"{data.data_root}/logs/traffic/dns"
    log_file = f"{log_dir}/queries.log"
    apt.packages(name="dnsmasq", packages=["dnsmasq"])
    files.directory(name=f"Folder {log_dir}", path=log_dir, user="dnsmasq",
                    group=data.service_user, mode="750")
    conf = files.put(
        name="dnsmasq configuration",
        src=as_file(render("dns/dnsmasq-autocode.conf.j2",
                           listen_address=data.orchestrator_address, dns_port=data.dns_port,
                           log_file=log_file, upstreams=data.dns_upstreams)),
        dest=DNSMASQ_CONF, user="root", group="root", mode="644",
    )
    files.put(name="logrotate for DNS queries",
              src=as_file(render("dns/logrotate-dnsmasq.j2", log_file=log_file)),
              dest="/etc/logrotate.d/autocode-dnsmasq", mode="644")
    server.shell(name="Check the dnsmasq configuration", commands=[DNSMASQ_TEST],
                 _if=conf.did_change)
    systemd.service(name="dnsmasq running", service="dnsmasq.service", running=True,
                    enabled=True)
    systemd.service(name="Restart dnsmasq", service="dnsmasq.service", restarted=True,
                    _if=conf.did_change)


@deploy("DNS resolver")
def worker() -> None:
    nameserver = host.data.orchestrator_address
    resolv = host.get_fact(Link, path="/etc/resolv.conf")
    if resolv and resolv.get("link_target") == RESOLVED_STUB:
        # systemd-resolved owns resolv.conf (Ubuntu): tell it, rather than fight it.
        conf = files.put(
            name="systemd-resolved: only the orchestrator",
            src=as_file(render("dns/resolved-autocode.conf.j2", nameserver=nameserver)),
            dest="/etc/systemd/resolved.conf.d/autocode.conf", mode="644",
        )
        systemd.service(name="Restart systemd-resolved", service="systemd-resolved.service",
                        restarted=True, _if=conf.did_change)
    else:
        files.put(name="resolv.conf: only the orchestrator",
                  src=as_file(render("dns/resolv.conf.j2", nameserver=nameserver)),
                  dest="/etc/resolv.conf", user="root", group="root", mode="644")
