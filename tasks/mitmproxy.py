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

from autocode.traffic.config import DEFAULT_INDEX, dump_config
from infra.component import Component
from infra.components import Catalogue
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
from infra.settings import HostSettings
from settings import elasticsearch as es_settings
from settings.base import Base
from settings.control import running_tasks_file, task_dirs
from settings.metering import LEDGER, Metering
from settings.mitmproxy import (
    ADDON,
    AGENT_ENV,
    CA_CERT,
    CA_KEY,
    CONFDIR,
    PROFILE,
    PROXY_USER,
    TRAFFIC_CONFIG,
    UPSTREAM_DIR,
    WORKER_CA,
    WORKER_CA_DIR,
    Mitmproxy,
)
from settings.runtime import Runtime, host_install_digest

COMPONENT = Component(
    name="mitmproxy",
    settings=Mitmproxy,
    system_users={"orchestrator": (PROXY_USER,)},
    data_tree={"orchestrator": {
        "logs/traffic": (PROXY_USER, "autocode", "750"),
        "logs/traffic/spool": (PROXY_USER, "autocode", "750"),
        "cache": ("root", "root", "755"),
        "cache/packages": (PROXY_USER, PROXY_USER, "750"),
    }},
    worker_ports=lambda proxy: [proxy.mitmproxy_port],
    runtime_extras={"orchestrator": ("proxy",)},
    runtime_pins=lambda proxy, python: proxy.runtime_pins(python),
)


def traffic_config(settings: HostSettings, workers: dict[str, str],
                   metered: dict[str, dict] | None = None,
                   es_key: es_settings.Credentials | None = None) -> str:
    """The traffic logger's configuration, built as data and written by the runtime's own
    serializer, which validates it with the parser the proxy uses. `workers`: address ->
    name; `metered`: each worker's name -> its daily_budget_usd and agent_type, whose LLM
    calls are metered and capped; `es_key`: the Elasticsearch API key in this apply."""
    proxy, base = settings[Mitmproxy], settings[Base]
    extra = {"metering": settings[Metering].section(
        base.data_root, settings[Runtime].timezone, metered)} if metered is not None else {}
    if proxy.package_cache_max_gb:
        extra["package_cache"] = {"dir": proxy.cache_dir(base.data_root),
                                  "max_bytes": int(proxy.package_cache_max_gb * 1024**3)}
    shipped_days = proxy.traffic_shipped_keep_days
    retention = {"keep_shipped_segments": shipped_days != 0,
                 "shipped_keep_days": shipped_days or None,
                 "dead_letter_keep_days": proxy.traffic_dead_letter_keep_days}
    return dump_config({**extra, **{k: v for k, v in retention.items() if v is not None},
        "spool_dir": proxy.spool_dir(base.data_root),
        "fail_closed": proxy.proxy_fail_closed,
        "non_http": proxy.proxy_non_http,
        "workers": workers,
        "elasticsearch": shipper_target(settings, es_key or es_settings.Credentials()),
        # Which task each worker runs (autocode-control writes it): records and ledger rows
        # carry the task's id, and the task's budget is held like the worker's day.
        "running_tasks": running_tasks_file(base.data_root),
    })


def shipper_target(settings: HostSettings, es_key: es_settings.Credentials) -> dict:
    """The shipper's `elasticsearch` section: the data stream the elasticsearch component
    makes, on its cluster unless traffic_elasticsearch_url names another."""
    target = {k: v for k, v in settings[es_settings.Elasticsearch].client(
        es_key.in_force).items() if v is not None}
    if settings[Mitmproxy].traffic_elasticsearch_url:
        target = {"url": settings[Mitmproxy].traffic_elasticsearch_url}
    return {**target, "index": DEFAULT_INDEX}


def metered_workers() -> dict[str, dict]:
    """Each worker's budget and agent, from its own settings."""
    out = {}
    for worker in inventory.get_group("workers"):
        runtime = Runtime.of(worker)
        out[worker.name] = {"daily_budget_usd": runtime.daily_budget_usd,
                            "agent_type": runtime.agent_type}
    return out


@deploy("mitmproxy")
def orchestrator(catalogue: Catalogue) -> None:
    settings = HostSettings.of(host)
    proxy, base = settings[Mitmproxy], settings[Base]
    venv = base.runtime_venv
    orch = inventory.get_group("orchestrator")[0]
    es_key = es_settings.credentials(settings, host.state, orch)
    workers = {str(w.data.ssh_hostname): w.name for w in inventory.get_group("workers")}
    config = traffic_config(settings, workers, metered_workers(), es_key)
    addon = render("mitmproxy/addon.py.j2")
    upstream = {Path(c).name: Path(c).expanduser()
                for c in proxy.proxy_upstream_ca_certs or []}

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
                  spool_dir=proxy.spool_dir(base.data_root),
                  ledger_dir=f"{base.data_root}/{Path(LEDGER).parent}",
                  cache_dir=proxy.cache_dir(base.data_root),
                  task_dirs=task_dirs(base.data_root))
    inputs = {"traffic.yaml": digest(config),
              "runtime": host_install_digest(host, catalogue) or ""}
    check_config = (f"runuser -u {PROXY_USER} -- {q(venv)}/bin/autocode-traffic-shipper "
                    f"--check-config --config {q(TRAFFIC_CONFIG)}")
    upstream_digest = digest("".join(f"{n}:{digest(p.read_bytes())}"
                                     for n, p in sorted(upstream.items())))
    units = ("autocode-mitmproxy.service", "autocode-traffic-shipper.service")
    systemd_unit(
        name="autocode-mitmproxy.service", unit="autocode-mitmproxy.service", batch=units,
        text=render("mitmproxy/autocode-mitmproxy.service.j2", confdir=CONFDIR,
                    port=proxy.mitmproxy_port, **common),
        inputs={**inputs, "upstream CAs": upstream_digest},
        restart_when=(config_op, upstream_op), check_command=check_config, settle_s=3)
    systemd_unit(
        name="autocode-traffic-shipper.service", unit="autocode-traffic-shipper.service",
        batch=units,
        text=render("mitmproxy/autocode-traffic-shipper.service.j2", **common),
        # It reads the cluster's key and CA files at start, which the elasticsearch
        # component writes.
        inputs={**inputs, **es_settings.client_inputs(settings[es_settings.Elasticsearch],
                                                      es_key)},
        restart_when=(config_op,),
        check_command=check_config, settle_s=3)


@deploy("Trust the proxy CA")
def worker(catalogue: Catalogue) -> None:
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
                 user="root", group=Base.of(host).service_user, mode="640")
    file_content(name="Proxy CA variables for login shells", path=PROFILE, batch=batch,
                 text=render("mitmproxy/proxy-ca.sh.j2", env_file=AGENT_ENV))
