"""The transparent egress proxy on the orchestrator, and its CA on the workers.

The CA is generated once on the orchestrator, by mitmproxy's own code, and kept across
re-applies; its private key never leaves that host. Workers get the certificate: read at
plan time when it already exists, or fetched from the orchestrator in the run that
creates it (all orchestrator operations are ordered before the workers').
"""

from __future__ import annotations

import hashlib
from io import StringIO
from pathlib import Path

from pyinfra import host, inventory
from pyinfra.api import FunctionCommand, deploy, operation
from pyinfra.facts.files import File, FindFiles
from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

from infra.facts import FileDigest, FileText, links_to
from infra.render import as_file, render
from tasks import runtime

PROXY_USER = "autocode-proxy"
CONFDIR = "/etc/autocode/mitmproxy"
CA_KEY = f"{CONFDIR}/mitmproxy-ca.pem"  # key and certificate, as mitmproxy keeps them
CA_CERT = f"{CONFDIR}/mitmproxy-ca-cert.pem"
TRAFFIC_CONFIG = "/etc/autocode/traffic.yaml"
WORKER_CA_DIR = "/usr/local/share/ca-certificates/autocode-proxy"
WORKER_CA = f"{WORKER_CA_DIR}/autocode-proxy-ca.crt"
AGENT_ENV = "/etc/autocode/proxy-ca.env"


def _spool_dir() -> str:
    return f"{host.data.data_root}/logs/traffic/spool"


def _worker_map() -> dict[str, str]:
    return {str(w.data.ssh_hostname): w.name for w in inventory.get_group("workers")}


@deploy("mitmproxy")
def orchestrator() -> None:
    data = host.data
    install = runtime.install(extras=("proxy",), pins=(f"mitmproxy=={data.mitmproxy_version}",))
    venv = runtime.venv_path()
    spool = _spool_dir()
    files.directory(name=f"Spool {spool}", path=spool, user=PROXY_USER,
                    group=data.service_user, mode="750")
    files.directory(name=f"Folder {CONFDIR}", path=CONFDIR, user=PROXY_USER,
                    group=PROXY_USER, mode="700")
    _ca(venv)
    upstream = _upstream_cas(data.proxy_upstream_ca_certs)

    addon = files.put(name="Addon shim", src=as_file(render("mitmproxy/addon.py.j2")),
                      dest=f"{CONFDIR}/autocode_addon.py", user="root", group=PROXY_USER,
                      mode="640")
    elasticsearch_url = f"http://127.0.0.1:{data.elasticsearch_port}"
    config = files.put(
        name="Traffic logger configuration",
        src=as_file(render("mitmproxy/traffic.yaml.j2", spool_dir=spool,
                           fail_closed=bool(data.proxy_fail_closed), workers=_worker_map(),
                           elasticsearch_url=elasticsearch_url)),
        dest=TRAFFIC_CONFIG, user="root", group=PROXY_USER, mode="640",
    )
    server.shell(name="Check the traffic logger configuration",
                 commands=[f"runuser -u {PROXY_USER} -- {venv}/bin/autocode-traffic-shipper "
                           f"--check-config --config {TRAFFIC_CONFIG}"],
                 _if=config.did_change)
    common = dict(user=PROXY_USER, venv=venv, config=TRAFFIC_CONFIG, spool_dir=spool)
    proxy_unit = _unit("autocode-mitmproxy.service", render(
        "mitmproxy/autocode-mitmproxy.service.j2", confdir=CONFDIR, port=data.mitmproxy_port,
        addon=f"{CONFDIR}/autocode_addon.py", **common))
    shipper_unit = _unit("autocode-traffic-shipper.service", render(
        "mitmproxy/autocode-traffic-shipper.service.j2", **common))

    new_code = [install] if install else []
    systemd.daemon_reload(name="Reload systemd units",
                          _if=any_changed(proxy_unit, shipper_unit))
    for unit, inputs in (
        ("autocode-mitmproxy.service", [addon, config, proxy_unit, *upstream, *new_code]),
        ("autocode-traffic-shipper.service", [config, shipper_unit, *new_code]),
    ):
        systemd.service(name=f"{unit} running", service=unit, running=True, enabled=True)
        systemd.service(name=f"Restart {unit}", service=unit, restarted=True,
                        _if=any_changed(*inputs))


def _unit(name: str, text: str):
    path = f"/etc/systemd/system/{name}"
    unit = files.put(name=f"Unit {name}", src=as_file(text), dest=path, mode="644")
    server.shell(name=f"Verify {name}", commands=[f"systemd-analyze verify {path}"],
                 _if=unit.did_change)
    return unit


def _ca(venv: str) -> None:
    if not host.get_fact(File, path=CA_KEY):
        generate = (f"from mitmproxy.certs import CertStore; "
                    f"CertStore.from_store('{CONFDIR}', 'mitmproxy', 2048)")
        server.shell(name="Generate the proxy CA (once)", commands=[
            f"{venv}/bin/python -c \"{generate}\"",
            f"chown -R {PROXY_USER}:{PROXY_USER} {CONFDIR}",
        ])
    files.file(name="Proxy CA private key", path=CA_KEY, user=PROXY_USER, group=PROXY_USER,
               mode="600")
    files.file(name="Proxy CA certificate", path=CA_CERT, user=PROXY_USER, group=PROXY_USER,
               mode="644")


def _upstream_cas(certs: list[str]) -> list:
    directory = f"{CONFDIR}/upstream"
    files.directory(name="Folder for upstream CAs", path=directory, user=PROXY_USER,
                    group=PROXY_USER, mode="750")
    wanted = {Path(c).name: c for c in certs}
    ops = [files.put(name=f"Upstream CA {name}", src=src, dest=f"{directory}/{name}",
                     user=PROXY_USER, group=PROXY_USER, mode="644")
           for name, src in sorted(wanted.items())]
    for path in sorted(host.get_fact(FindFiles, path=directory, maxdepth=1) or []):
        if Path(path).name not in wanted:
            ops.append(files.file(name=f"Remove upstream CA {Path(path).name}", path=path,
                                  present=False))
    return ops


# --- workers -------------------------------------------------------------------------

@deploy("Trust the proxy CA")
def worker() -> None:
    orch = inventory.get_group("orchestrator")[0]
    cert = orch.get_fact(FileText, path=CA_CERT)
    files.directory(name=f"Folder {WORKER_CA_DIR}", path=WORKER_CA_DIR, user="root",
                    group="root", mode="755")
    proxy_ca_certificate(name="Proxy CA in the trust store", cert=cert, source=orch.name)
    files.put(name="Proxy CA variables for agents",
              src=as_file(render("mitmproxy/proxy-ca.env.j2", ca_file=WORKER_CA)),
              dest=AGENT_ENV, user="root", group=host.data.service_user, mode="640")
    files.put(name="Proxy CA variables for login shells",
              src=as_file(render("mitmproxy/proxy-ca.sh.j2", env_file=AGENT_ENV)),
              dest="/etc/profile.d/autocode-proxy-ca.sh", mode="644")


@operation()
def proxy_ca_certificate(cert: str | None, source: str):
    """Install the proxy CA certificate and rebuild the trust store, when needed."""
    link_ok = links_to(host, "/etc/ssl/certs/autocode-proxy-ca.pem", WORKER_CA)
    if cert is not None:
        if (host.get_fact(FileDigest, path=WORKER_CA)
                == hashlib.sha256(cert.encode()).hexdigest() and link_ok):
            host.noop("proxy CA certificate is installed and trusted")
            return
        yield from files.put._inner(src=StringIO(cert), dest=WORKER_CA, mode="644")
    else:
        # Not there at plan time: the orchestrator generates it earlier in this run.
        yield FunctionCommand(_copy_ca_from, (source,), {})
    yield "update-ca-certificates"


def _copy_ca_from(state, host, source: str) -> None:
    orch = state.inventory.get_host(source)
    ok, output = orch.run_shell_command(f"cat {CA_CERT}")
    if not ok:
        raise RuntimeError(f"could not read the proxy CA certificate {CA_CERT} on {source}")
    cert = "\n".join(output.stdout_lines).strip() + "\n"
    if "BEGIN CERTIFICATE" not in cert:
        raise RuntimeError(f"{CA_CERT} on {source} is not a PEM certificate")
    if not host.put_file(StringIO(cert), WORKER_CA):
        raise RuntimeError(f"could not write {WORKER_CA} on {host.name}")
