"""Worker logs to the orchestrator: rsyslog on each worker reads the runtime's JSON log
files (`<data_root>/logs/workers/*.log`, autocode/logging.py) and forwards every line over
RELP (acknowledged delivery: a line the receiver did not confirm is sent again; the
default) or, with `log_forwarding_protocol: tcp`, over syslog TCP with each line
zlib-compressed (no acknowledgements: what the orchestrator took but never wrote, if it
hangs or dies, is lost; RELP cannot compress, README "Logs") from a
disk-assisted queue that waits out the receiver's absence (saved at rsyslog's shutdown;
lines in flight at that moment can be lost, as rsyslog documents: README, "Logs"), with
mutual TLS from the platform CA when the role has it (each worker's certificate made on
it, signed on the orchestrator). The orchestrator's rsyslog writes
each worker's lines to `<data_root>/logs/workers/<worker>/worker.log`, the folder chosen by
the sender's address through a table built from the inventory, never by the hostname a
sender claims; lines from an address not in the table go to `unknown-senders.log`.
Workers reach only the RELP port on the orchestrator for it, and never Elasticsearch.

Rotation: the orchestrator's copies daily by logrotate (kept `log_retention_days`, then
rsyslog told to reopen them); on the workers the runtime rotates its own files (a file
per day, kept 30 days, by loguru), which imfile follows as new files.
"""

from __future__ import annotations

import json

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.operations import apt

from infra.component import Component
from infra.components import Catalogue
from infra.operations import (
    certificate_signed_on_host,
    digest,
    directory,
    file_content,
    signed_certificate,
    systemd_unit,
)
from infra.render import render
from infra.settings import HostSettings
from settings.base import Base
from settings.elasticsearch import Elasticsearch
from settings.inventory import Addresses
from settings.log_forwarding import CONFDIR, LogForwarding
from settings.platform_ca import CA_CERT, CA_KEY, TRUSTED_CA

UNIT = "rsyslog.service"
CHECK = "rsyslogd -N1 -f /etc/rsyslog.conf"
WORKER_TABLE = f"{CONFDIR}/workers.json"
TLS_CERT = f"{CONFDIR}/relp.crt"
TLS_KEY = f"{CONFDIR}/relp.key"
RECEIVE_CONF = "/etc/rsyslog.d/10-autocode-receive.conf"
FORWARD_CONF = "/etc/rsyslog.d/10-autocode-forward.conf"
LOGROTATE = "/etc/logrotate.d/autocode-worker-logs"
QUEUE_NAME = "autocode-forward"
# zlib level for `tcp`: level 6 gives nearly all of 9's saving on short lines, for less CPU.
ZIP_LEVEL = 6

COMPONENT = Component(
    name="log_forwarding",
    settings=LogForwarding,
    worker_ports=lambda logs: [logs.log_forwarding_port],
    # Nobody else on the uplink but the management networks.
    management_ports=lambda logs: [logs.log_forwarding_port],
)


def uses_tls(logs: LogForwarding, catalogue: Catalogue, role: str) -> bool:
    return logs.log_forwarding_tls and catalogue.has_certificate_authority(role)


def worker_table(workers: dict[str, str]) -> str:
    """rsyslog's lookup table: sender address -> the worker's folder name."""
    table = [{"index": address, "value": name} for address, name in sorted(workers.items())]
    return json.dumps({"version": 1, "nomatch": "", "type": "string", "table": table},
                      indent=1) + "\n"


def logs_dir(data_root: str) -> str:
    return f"{data_root}/logs/workers"


def receive_config(settings: HostSettings, tls: bool, peers: list[str]) -> str:
    """`peers`: the workers' names, which their client certificates must carry (mutual
    TLS: librelp's GnuTLS offers no certificate cipher suites to anonymous clients)."""
    logs, base = settings[LogForwarding], settings[Base]
    return render("log_forwarding/receive.conf.j2", logs_dir=logs_dir(base.data_root),
                  port=logs.log_forwarding_port, table=WORKER_TABLE,
                  protocol=logs.log_forwarding_protocol,
                  tls=tls, ca=CA_CERT, cert=TLS_CERT, key=TLS_KEY,
                  peers=sorted(peers), group=base.service_user)


def forward_config(settings: HostSettings, target: str, peer: str, tls: bool) -> str:
    logs, base = settings[LogForwarding], settings[Base]
    return render("log_forwarding/forward.conf.j2", logs_dir=logs_dir(base.data_root),
                  target=target, port=logs.log_forwarding_port, peer=peer, tls=tls,
                  protocol=logs.log_forwarding_protocol, zip_level=ZIP_LEVEL,
                  ca=TRUSTED_CA, cert=TLS_CERT, key=TLS_KEY, queue=QUEUE_NAME,
                  queue_mb=logs.log_forwarding_queue_max_mb)


def _orchestrator():
    return inventory.get_group("orchestrator")[0]


def _listen_address(orch) -> str:
    return Addresses.of(orch).gateway()


@deploy("Worker logs: receiver")
def orchestrator(catalogue: Catalogue) -> None:
    logs, base = LogForwarding.of(host), Base.of(host)
    tls = uses_tls(logs, catalogue, "orchestrator")
    apt.packages(name="rsyslog and its forwarding modules", packages=logs.packages(tls),
                 cache_time=base.apt_cache_seconds)
    batch = (CONFDIR, WORKER_TABLE, TLS_CERT, TLS_KEY, RECEIVE_CONF, LOGROTATE)
    directory(name=f"Folder {CONFDIR}", path=CONFDIR, user="root", group="root", mode="750",
              batch=batch)
    restart_when = []
    if tls:
        # The name the workers check (tls.permittedPeer), and its addresses.
        names = (host.name, _listen_address(host), str(Addresses.of(host).ssh_hostname))
        restart_when.append(signed_certificate(
            name="Log receiver's TLS certificate", cert=TLS_CERT, key=TLS_KEY,
            ca_cert=CA_CERT, ca_key=CA_KEY, common_name=host.name,
            names=names, user="root", group="root", batch=batch))
    workers = {str(w.data.ssh_hostname): w.name for w in inventory.get_group("workers")}
    table = worker_table(workers)
    config = receive_config(HostSettings.of(host), tls, list(workers.values()))
    restart_when.append(file_content(name="Worker addresses to folders", path=WORKER_TABLE,
                                     text=table, mode="640", batch=batch))
    restart_when.append(file_content(name="rsyslog: receive worker logs", path=RECEIVE_CONF,
                                     text=config, batch=batch))
    file_content(name="logrotate for worker logs", path=LOGROTATE, batch=batch,
                 text=render("log_forwarding/logrotate.j2", logs_dir=logs_dir(base.data_root),
                             keep=Elasticsearch.of(host).log_retention_days))
    systemd_unit(name="rsyslog running (receiver)", unit=UNIT,
                 inputs={"receive.conf": digest(config), "workers.json": digest(table)},
                 restart_when=tuple(restart_when), check_command=CHECK)


@deploy("Worker logs: forwarder")
def worker(catalogue: Catalogue) -> None:
    logs, base = LogForwarding.of(host), Base.of(host)
    orch = _orchestrator()
    tls = uses_tls(logs, catalogue, "worker")
    apt.packages(name="rsyslog and its forwarding modules", packages=logs.packages(tls),
                 cache_time=base.apt_cache_seconds)
    batch = (CONFDIR, TLS_CERT, TLS_KEY, FORWARD_CONF)
    restart_when = []
    if tls:
        directory(name=f"Folder {CONFDIR}", path=CONFDIR, user="root", group="root",
                  mode="750", batch=batch)
        # Its key is made here and never leaves; only the request visits the orchestrator.
        restart_when.append(certificate_signed_on_host(
            name="Log forwarder's TLS certificate", signer=orch.name,
            signer_ca_cert=CA_CERT, signer_ca_key=CA_KEY,
            cert=TLS_CERT, key=TLS_KEY, ca_cert=TRUSTED_CA, common_name=host.name,
            names=(host.name, str(Addresses.of(host).ssh_hostname)), user="root", group="root",
            # One worker at a time: the signings share the orchestrator's connection.
            batch=batch, _serial=True))
    config = forward_config(HostSettings.of(host), _listen_address(orch), orch.name, tls)
    restart_when.append(file_content(name="rsyslog: forward worker logs", path=FORWARD_CONF,
                                     text=config, batch=batch))
    systemd_unit(name="rsyslog running (forwarder)", unit=UNIT,
                 inputs={"forward.conf": digest(config)}, restart_when=tuple(restart_when),
                 check_command=CHECK)
