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

from infra import components
from infra.component import Component
from infra.operations import (
    certificate_signed_on_host,
    digest,
    directory,
    file_content,
    signed_certificate,
    systemd_unit,
)
from infra.render import render
from infra.validation import Problems, check_bool, is_number
from tasks import platform_ca

UNIT = "rsyslog.service"
CHECK = "rsyslogd -N1 -f /etc/rsyslog.conf"
CONFDIR = "/etc/autocode/rsyslog"
WORKER_TABLE = f"{CONFDIR}/workers.json"
TLS_CERT = f"{CONFDIR}/relp.crt"
TLS_KEY = f"{CONFDIR}/relp.key"
RECEIVE_CONF = "/etc/rsyslog.d/10-autocode-receive.conf"
FORWARD_CONF = "/etc/rsyslog.d/10-autocode-forward.conf"
LOGROTATE = "/etc/logrotate.d/autocode-worker-logs"
QUEUE_NAME = "autocode-forward"
PROTOCOLS = {
    "relp": "acknowledged, uncompressed (RELP's only compression is TLS's, which Debian's "
            "TLS libraries do not do)",
    "tcp": "syslog over TCP, each line zlib-compressed, not acknowledged",
}
# zlib level for `tcp`: level 6 gives nearly all of 9's saving on short lines, for less CPU.
ZIP_LEVEL = 6


def packages(data, tls: bool) -> list[str]:
    """rsyslog's RELP module, or for TLS over plain syslog TCP its GnuTLS stream driver."""
    extra = (["rsyslog-relp"] if data["log_forwarding_protocol"] == "relp"
             else ["rsyslog-gnutls"] if tls else [])
    return ["rsyslog", *extra, "logrotate"]


def check(problems: Problems, role: str, data) -> None:
    check_bool(problems, "log_forwarding_tls", data.get("log_forwarding_tls"))
    protocol = data.get("log_forwarding_protocol")
    if protocol not in PROTOCOLS:
        problems.add("log_forwarding_protocol", f"{protocol!r}: choose one of "
                     + "; ".join(f"{name} ({why})" for name, why in PROTOCOLS.items()))
    size = data.get("log_forwarding_queue_max_mb")
    if not (is_number(size) and int(size) == size and 16 <= size <= 1024 * 1024):
        problems.add("log_forwarding_queue_max_mb", f"{size!r}: give the most disk in MB a "
                     "worker's queue may use while the orchestrator is away, from 16, e.g. "
                     "1024")


COMPONENT = Component(
    name="log_forwarding",
    settings={
        # On the orchestrator's worker address, for either protocol.
        "log_forwarding_port": 2514,
        # relp: acknowledged, uncompressed; tcp: compressed, unacknowledged (PROTOCOLS).
        "log_forwarding_protocol": "relp",
        # TLS with the platform CA when the role has it (tasks/platform_ca.py).
        "log_forwarding_tls": True,
        # Disk a worker's queue may fill while the orchestrator does not answer.
        "log_forwarding_queue_max_mb": 1024,
    },
    check=check,
    worker_ports=lambda data: [data["log_forwarding_port"]],
    # Nobody else on the uplink but the management networks.
    management_ports=lambda data: [data["log_forwarding_port"]],
)


def uses_tls(data, role: str) -> bool:
    return bool(data.get("log_forwarding_tls")) and any(
        c.name == "platform_ca" for c in components.of_role(role))


def worker_table(workers: dict[str, str]) -> str:
    """rsyslog's lookup table: sender address -> the worker's folder name."""
    table = [{"index": address, "value": name} for address, name in sorted(workers.items())]
    return json.dumps({"version": 1, "nomatch": "", "type": "string", "table": table},
                      indent=1) + "\n"


def logs_dir(data) -> str:
    return f"{data['data_root']}/logs/workers"


def receive_config(data, tls: bool, peers: list[str]) -> str:
    """`peers`: the workers' names, which their client certificates must carry (mutual
    TLS: librelp's GnuTLS offers no certificate cipher suites to anonymous clients)."""
    return render("log_forwarding/receive.conf.j2", logs_dir=logs_dir(data),
                  port=data["log_forwarding_port"], table=WORKER_TABLE,
                  protocol=data["log_forwarding_protocol"],
                  tls=tls, ca=platform_ca.CA_CERT, cert=TLS_CERT, key=TLS_KEY,
                  peers=sorted(peers), group=data["service_user"])


def forward_config(data, target: str, peer: str, tls: bool) -> str:
    return render("log_forwarding/forward.conf.j2", logs_dir=logs_dir(data), target=target,
                  port=data["log_forwarding_port"], peer=peer, tls=tls,
                  protocol=data["log_forwarding_protocol"], zip_level=ZIP_LEVEL,
                  ca=platform_ca.TRUSTED_CA, cert=TLS_CERT, key=TLS_KEY, queue=QUEUE_NAME,
                  queue_mb=int(data["log_forwarding_queue_max_mb"]))


def _orchestrator():
    return inventory.get_group("orchestrator")[0]


def _listen_address(orch) -> str:
    return str(orch.data.get("worker_address") or orch.data.get("orchestrator_address")
               or orch.data.ssh_hostname)


@deploy("Worker logs: receiver")
def orchestrator() -> None:
    data = host.data
    d = data.dict()
    tls = uses_tls(d, "orchestrator")
    apt.packages(name="rsyslog and its forwarding modules", packages=packages(d, tls),
                 cache_time=data.apt_cache_seconds)
    batch = (CONFDIR, WORKER_TABLE, TLS_CERT, TLS_KEY, RECEIVE_CONF, LOGROTATE)
    directory(name=f"Folder {CONFDIR}", path=CONFDIR, user="root", group="root", mode="750",
              batch=batch)
    restart_when = []
    if tls:
        # The name the workers check (tls.permittedPeer), and its addresses.
        names = (host.name, _listen_address(host), str(data.ssh_hostname))
        restart_when.append(signed_certificate(
            name="Log receiver's TLS certificate", cert=TLS_CERT, key=TLS_KEY,
            ca_cert=platform_ca.CA_CERT, ca_key=platform_ca.CA_KEY, common_name=host.name,
            names=names, user="root", group="root", batch=batch))
    workers = {str(w.data.ssh_hostname): w.name for w in inventory.get_group("workers")}
    table = worker_table(workers)
    config = receive_config(d, tls, list(workers.values()))
    restart_when.append(file_content(name="Worker addresses to folders", path=WORKER_TABLE,
                                     text=table, mode="640", batch=batch))
    restart_when.append(file_content(name="rsyslog: receive worker logs", path=RECEIVE_CONF,
                                     text=config, batch=batch))
    file_content(name="logrotate for worker logs", path=LOGROTATE, batch=batch,
                 text=render("log_forwarding/logrotate.j2", logs_dir=logs_dir(d),
                             keep=d["log_retention_days"]))
    systemd_unit(name="rsyslog running (receiver)", unit=UNIT,
                 inputs={"receive.conf": digest(config), "workers.json": digest(table)},
                 restart_when=tuple(restart_when), check_command=CHECK)


@deploy("Worker logs: forwarder")
def worker() -> None:
    data = host.data
    d = data.dict()
    orch = _orchestrator()
    tls = uses_tls(d, "worker")
    apt.packages(name="rsyslog and its forwarding modules", packages=packages(d, tls),
                 cache_time=data.apt_cache_seconds)
    batch = (CONFDIR, TLS_CERT, TLS_KEY, FORWARD_CONF)
    restart_when = []
    if tls:
        directory(name=f"Folder {CONFDIR}", path=CONFDIR, user="root", group="root",
                  mode="750", batch=batch)
        # Its key is made here and never leaves; only the request visits the orchestrator.
        restart_when.append(certificate_signed_on_host(
            name="Log forwarder's TLS certificate", signer=orch.name,
            signer_ca_cert=platform_ca.CA_CERT, signer_ca_key=platform_ca.CA_KEY,
            cert=TLS_CERT, key=TLS_KEY, ca_cert=platform_ca.TRUSTED_CA, common_name=host.name,
            names=(host.name, str(data.ssh_hostname)), user="root", group="root",
            # One worker at a time: the signings share the orchestrator's connection.
            batch=batch, _serial=True))
    config = forward_config(d, _listen_address(orch), orch.name, tls)
    restart_when.append(file_content(name="rsyslog: forward worker logs", path=FORWARD_CONF,
                                     text=config, batch=batch))
    systemd_unit(name="rsyslog running (forwarder)", unit=UNIT,
                 inputs={"forward.conf": digest(config)}, restart_when=tuple(restart_when),
                 check_command=CHECK)
