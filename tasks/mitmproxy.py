"""The transparent egress proxy on the orchestrator, and its CA on the workers.

The CA is made once on the orchestrator by the runtime (`autocode-traffic-shipper
--init-ca`, mitmproxy's own code) and kept across re-applies; its private key never leaves
that host. Workers get the certificate, read from the orchestrator, whose operations all
run before the workers'.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import host, inventory
from pyinfra.api import deploy

from autocode.traffic.config import DEFAULT_INDEX, NON_HTTP_POLICIES, dump_config
from infra.component import Component
from infra.facts import q
from infra.operations import (
    digest,
    directory,
    file_content,
    file_from_host,
    made_once,
    synced_folder,
    systemd_unit,
)
from infra.render import render
from infra.validation import Problems, check_bool, check_pem_files, is_number
from tasks import metering, runtime

PROXY_USER = "autocode-proxy"
CONFDIR = "/etc/autocode/mitmproxy"
CA_KEY = f"{CONFDIR}/mitmproxy-ca.pem"  # key and certificate, as mitmproxy keeps them
CA_CERT = f"{CONFDIR}/mitmproxy-ca-cert.pem"
UPSTREAM_DIR = f"{CONFDIR}/upstream"
ADDON = f"{CONFDIR}/autocode_addon.py"
TRAFFIC_CONFIG = "/etc/autocode/traffic.yaml"
WORKER_CA_DIR = "/usr/local/share/ca-certificates/autocode-proxy"
WORKER_CA = f"{WORKER_CA_DIR}/autocode-proxy-ca.crt"
AGENT_ENV = "/etc/autocode/proxy-ca.env"
PROFILE = "/etc/profile.d/autocode-proxy-ca.sh"


def check(problems: Problems, role: str, data) -> None:
    check_bool(problems, "proxy_fail_closed", data.get("proxy_fail_closed"))
    if data.get("proxy_non_http") not in NON_HTTP_POLICIES:
        problems.add("proxy_non_http", f"{data.get('proxy_non_http')!r} is not a policy; use "
                     f"one of {', '.join(NON_HTTP_POLICIES)} (block refuses and records "
                     "connections that are not HTTP; allow relays and records them)")
    check_pem_files(problems, "proxy_upstream_ca_certs", data.get("proxy_upstream_ca_certs"))
    size = data.get("package_cache_max_gb")
    if not (is_number(size) and size >= 0):
        problems.add("package_cache_max_gb", f"{size!r} is not a size in GB; e.g. 5, or 0 "
                     "for no package cache")
    version = data.get("mitmproxy_version")
    if not (isinstance(version, str) and version[:1].isdigit()):
        problems.add("mitmproxy_version", f"{version!r} is not a version; pin one, e.g. 11.0.2")
    newer = data.get("mitmproxy_version_py312")
    if newer is not None and not (isinstance(newer, str) and newer[:1].isdigit()):
        problems.add("mitmproxy_version_py312", f"{newer!r} is not a version; pin one, e.g. "
                     "12.3.1, or null for mitmproxy_version on every Python")
    for name, zero_ok in (("traffic_shipped_keep_days", True),
                          ("traffic_dead_letter_keep_days", False)):
        days = data.get(name)
        if days is not None and not (is_number(days) and (days > 0 or zero_ok and days == 0)):
            problems.add(name, f"{days!r} is not a number of days; e.g. 7, or null to keep "
                         "them" + (", or 0 to keep no copy" if zero_ok else ""))
    url = data.get("traffic_elasticsearch_url")
    if url is not None and not (isinstance(url, str) and url.startswith(("http://",
                                                                         "https://"))):
        problems.add("traffic_elasticsearch_url", f"{url!r} is not an http(s) URL; e.g. "
                     "http://127.0.0.1:9200, or leave it unset for the elasticsearch "
                     "component's cluster")


COMPONENT = Component(
    name="mitmproxy",
    settings={
        "mitmproxy_port": 8080,
        # On a host whose python3 is 3.12 or newer (Debian 13, Ubuntu 24.04), the runtime
        # takes mitmproxy_version_py312 (mitmproxy 12 needs Python 3.12); null: the same
        # mitmproxy_version everywhere.
        "mitmproxy_version": "11.0.2",
        "mitmproxy_version_py312": "12.3.1",
        # Unaudited egress is worse than none: when its spool cannot be written, new
        # flows get a 503 unless this is False.
        "proxy_fail_closed": True,
        # Connections that are not HTTP (raw TCP, TLS around another protocol, WebSocket
        # and other upgrades): "block" refuses them, "allow" relays them; each is recorded.
        "proxy_non_http": "block",
        # Control-machine paths of CA certificates the proxy trusts upstream, beyond the
        # system store.
        "proxy_upstream_ca_certs": [],
        # Where the traffic shipper sends the spool; unset: the elasticsearch component's
        # cluster (the local node, or elasticsearch_url), with its API key and CA.
        "traffic_elasticsearch_url": None,
        # Content-addressed package artifacts (PyPI's files) served from the orchestrator's
        # disk, each checked against its digest; 0 turns the cache off.
        "package_cache_max_gb": 5,
        # Retention on the orchestrator's disk: shipped spool segments are kept this many
        # days (a local copy beside Elasticsearch; deleted sooner when the disk runs short),
        # records Elasticsearch refused for good (dead letters: their only copy) this
        # many days after their last day. null: kept; shipped 0: no copy kept at all.
        "traffic_shipped_keep_days": 7,
        "traffic_dead_letter_keep_days": 90,
    },
    check=check,
    system_users={"orchestrator": (PROXY_USER,)},
    data_tree={"orchestrator": {
        "logs/traffic": (PROXY_USER, "autocode", "750"),
        "logs/traffic/spool": (PROXY_USER, "autocode", "750"),
        "cache": ("root", "root", "755"),
        "cache/packages": (PROXY_USER, PROXY_USER, "750"),
    }},
    worker_ports=lambda data: [data["mitmproxy_port"]],
    runtime_extras={"orchestrator": ("proxy",)},
    runtime_pins=lambda data: runtime_pins(data),
)


def mitmproxy_pin(data) -> str:
    """The mitmproxy release for this host: mitmproxy_version_py312 where its python3 (the
    runtime's `host_python` fact) is 3.12 or newer, else mitmproxy_version."""
    python = data.get("host_python")
    if python and tuple(python) >= (3, 12) and data.get("mitmproxy_version_py312"):
        return data["mitmproxy_version_py312"]
    return data["mitmproxy_version"]


def runtime_pins(data) -> list[str]:
    version = mitmproxy_pin(data)
    # mitmproxy 11 imports passlib, whose bcrypt probe crashes on bcrypt 5 (12 needs 5).
    return [f"mitmproxy=={version}"] + (["bcrypt>=4,<5"] if version.startswith("11.") else [])


def spool_dir(data) -> str:
    return f"{data['data_root']}/logs/traffic/spool"


def cache_dir(data) -> str:
    return f"{data['data_root']}/cache/packages"


def traffic_config(data, workers: dict[str, str], metered: dict[str, dict] | None = None
                   ) -> str:
    """The traffic logger's configuration, built as data and written by the runtime's own
    serializer, which validates it with the parser the proxy uses; `metered`: the workers'
    host data by name, whose LLM calls are metered and capped (tasks/metering.py)."""
    extra = {"metering": metering.metering_section(data, metered)} if metered is not None \
        else {}
    if data.get("package_cache_max_gb"):
        extra["package_cache"] = {"dir": cache_dir(data),
                                  "max_bytes": int(data["package_cache_max_gb"] * 1024**3)}
    shipped_days = data["traffic_shipped_keep_days"]
    retention = {"keep_shipped_segments": shipped_days != 0,
                 "shipped_keep_days": shipped_days or None,
                 "dead_letter_keep_days": data["traffic_dead_letter_keep_days"]}
    return dump_config({**extra, **{k: v for k, v in retention.items() if v is not None},
        "spool_dir": spool_dir(data),
        "fail_closed": bool(data["proxy_fail_closed"]),
        "non_http": data["proxy_non_http"],
        "workers": workers,
        "elasticsearch": shipper_target(data),
    })


def shipper_target(data) -> dict:
    """The shipper's `elasticsearch` section: the data stream the elasticsearch component
    makes, on its cluster unless traffic_elasticsearch_url names another."""
    from tasks import elasticsearch
    target = {k: v for k, v in elasticsearch.client(data).items() if v is not None}
    if data.get("traffic_elasticsearch_url"):
        target = {"url": data["traffic_elasticsearch_url"]}
    return {**target, "index": DEFAULT_INDEX}


@deploy("mitmproxy")
def orchestrator() -> None:
    from tasks import elasticsearch
    data = host.data
    venv = runtime.venv_path()
    workers = {str(w.data.ssh_hostname): w.name for w in inventory.get_group("workers")}
    config = traffic_config(data.dict(), workers, metering.workers_data())
    addon = render("mitmproxy/addon.py.j2")
    upstream = {Path(c).name: Path(c).expanduser() for c in data.proxy_upstream_ca_certs}

    directory(name=f"Folder {CONFDIR}", path=CONFDIR, user=PROXY_USER, group=PROXY_USER,
              mode="700")
    batch = (CA_KEY, CA_CERT, ADDON, TRAFFIC_CONFIG)
    make_ca = f"runuser -u {PROXY_USER} -- {q(venv)}/bin/autocode-traffic-shipper --init-ca " \
              f"{q(CONFDIR)}"
    made_once(name="Proxy CA private key", path=CA_KEY, command=make_ca, user=PROXY_USER,
              group=PROXY_USER, mode="600", batch=batch)
    made_once(name="Proxy CA certificate", path=CA_CERT, command=make_ca, user=PROXY_USER,
              group=PROXY_USER, mode="644", batch=batch)
    upstream_op = synced_folder(name="Upstream CAs", path=UPSTREAM_DIR, files=upstream,
                                user=PROXY_USER, group=PROXY_USER, mode="644",
                                folder_mode="750")
    # The unit runs autocode-proxy (the addon built in); the shim is for running the
    # addon under plain mitmdump by hand (`mitmdump -s`), e.g. to debug.
    file_content(name="Addon shim", path=ADDON, text=addon, user="root", group=PROXY_USER,
                 mode="640", batch=batch)
    config_op = file_content(name="Traffic logger configuration", path=TRAFFIC_CONFIG,
                             text=config, user="root", group=PROXY_USER, mode="640",
                             batch=batch)

    common = dict(user=PROXY_USER, venv=venv, config=TRAFFIC_CONFIG,
                  spool_dir=spool_dir(data.dict()),
                  ledger_dir=f"{data.data_root}/{Path(metering.LEDGER).parent}",
                  cache_dir=cache_dir(data.dict()))
    inputs = {"traffic.yaml": digest(config), "runtime": runtime.install_digest() or ""}
    check_config = (f"runuser -u {PROXY_USER} -- {q(venv)}/bin/autocode-traffic-shipper "
                    f"--check-config --config {q(TRAFFIC_CONFIG)}")
    upstream_digest = digest("".join(f"{n}:{digest(p.read_bytes())}"
                                     for n, p in sorted(upstream.items())))
    units = ("autocode-mitmproxy.service", "autocode-traffic-shipper.service")
    systemd_unit(
        name="autocode-mitmproxy.service", unit="autocode-mitmproxy.service", batch=units,
        text=render("mitmproxy/autocode-mitmproxy.service.j2", confdir=CONFDIR,
                    port=data.mitmproxy_port, **common),
        inputs={**inputs, "upstream CAs": upstream_digest},
        restart_when=(config_op, upstream_op), check_command=check_config, settle_s=3)
    systemd_unit(
        name="autocode-traffic-shipper.service", unit="autocode-traffic-shipper.service",
        batch=units,
        text=render("mitmproxy/autocode-traffic-shipper.service.j2", **common),
        # It reads the cluster's key and CA files at start, which the elasticsearch
        # component writes.
        inputs={**inputs, **elasticsearch.client_inputs(data.dict())}, restart_when=(config_op,),
        check_command=check_config, settle_s=3)


@deploy("Trust the proxy CA")
def worker() -> None:
    orchestrator_host = inventory.get_group("orchestrator")[0]
    directory(name=f"Folder {WORKER_CA_DIR}", path=WORKER_CA_DIR, user="root", group="root",
              mode="755")
    file_from_host(name="Proxy CA in the trust store", source=orchestrator_host.name,
                   source_path=CA_CERT, path=WORKER_CA, mode="644",
                   must_contain="-----BEGIN CERTIFICATE-----",
                   then=("update-ca-certificates",),
                   then_creates={"/etc/ssl/certs/autocode-proxy-ca.pem": WORKER_CA})
    batch = (AGENT_ENV, PROFILE)
    file_content(name="Proxy CA variables for agents", path=AGENT_ENV, batch=batch,
                 text=render("mitmproxy/proxy-ca.env.j2", ca_file=WORKER_CA),
                 user="root", group=host.data.service_user, mode="640")
    file_content(name="Proxy CA variables for login shells", path=PROFILE, batch=batch,
                 text=render("mitmproxy/proxy-ca.sh.j2", env_file=AGENT_ENV))
