"""DNS: a forwarder on the orchestrator (dnsmasq) that logs every query the workers make,
and workers that resolve only through it."""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import Link
from pyinfra.operations import apt

from infra.component import Component
from infra.components import Catalogue
from infra.operations import digest, directory, file_content, systemd_unit
from infra.render import render
from settings.base import Base
from settings.dns import Dns
from settings.inventory import Addresses

DNSMASQ_CONF = "/etc/dnsmasq.d/autocode.conf"
LOGROTATE = "/etc/logrotate.d/autocode-dnsmasq"
# As Debian's init script runs it, so the check sees what the service will load.
DNSMASQ_TEST = ("dnsmasq --test -C /etc/dnsmasq.conf "
                "-7 /etc/dnsmasq.d,.dpkg-dist,.dpkg-old,.dpkg-new")
RESOLVED_STUB = "../run/systemd/resolve/stub-resolv.conf"


COMPONENT = Component(
    name="dns",
    settings=Dns,
    worker_ports=lambda dns: [dns.dns_port],  # TCP, beside UDP: large answers
)


@deploy("DNS forwarder")
def orchestrator(catalogue: Catalogue) -> None:
    dns, base = Dns.of(host), Base.of(host)
    log_dir = dns.query_log_dir(base.data_root)
    log_file = f"{log_dir}/queries.log"
    apt.packages(name="dnsmasq", packages=["dnsmasq"])
    # Owned by the account the package creates, so not in the data tree base makes.
    directory(name=f"Folder {log_dir}", path=log_dir, user="dnsmasq",
              group=base.service_user, mode="750")
    conf = render("dns/dnsmasq-autocode.conf.j2",
                  listen_address=Addresses.of(host).orchestrator_address,
                  dns_port=dns.dns_port, log_file=log_file, upstreams=dns.dns_upstreams)
    batch = (DNSMASQ_CONF, LOGROTATE)
    conf_op = file_content(name="dnsmasq configuration", path=DNSMASQ_CONF, text=conf,
                           batch=batch)
    file_content(name="logrotate for DNS queries", path=LOGROTATE, batch=batch,
                 text=render("dns/logrotate-dnsmasq.j2", log_file=log_file))
    systemd_unit(name="dnsmasq running", unit="dnsmasq.service",
                 inputs={DNSMASQ_CONF: digest(conf)}, restart_when=(conf_op,),
                 check_command=DNSMASQ_TEST)


@deploy("DNS resolver")
def worker(catalogue: Catalogue) -> None:
    nameserver = Addresses.of(host).orchestrator_address
    resolv = host.get_fact(Link, path="/etc/resolv.conf")
    if resolv and resolv.get("link_target") == RESOLVED_STUB:
        # systemd-resolved owns resolv.conf (Ubuntu): tell it, rather than fight it.
        conf = render("dns/resolved-autocode.conf.j2", nameserver=nameserver)
        directory(name="Folder /etc/systemd/resolved.conf.d",
                  path="/etc/systemd/resolved.conf.d", user="root", group="root", mode="755")
        conf_op = file_content(name="systemd-resolved: only the orchestrator",
                               path="/etc/systemd/resolved.conf.d/autocode.conf", text=conf)
        systemd_unit(name="systemd-resolved running", unit="systemd-resolved.service",
                     inputs={"autocode.conf": digest(conf)}, restart_when=(conf_op,))
    else:
        file_content(name="resolv.conf: only the orchestrator", path="/etc/resolv.conf",
                     text=render("dns/resolv.conf.j2", nameserver=nameserver))
