"""Orchestration: a Nomad server on the orchestrator, a Nomad client on each worker, and the
seed's `autocode-worker` job running one coding agent per worker (`worker_runner: nomad`,
the production default). With `worker_runner: systemd` (the lab's choice, since Nomad's
binaries come only from HashiCorp) the agents run as a systemd unit per worker
(tasks/worker.py) and this component does nothing at all: no package, file or port.

- Nomad from HashiCorp's apt repository (infra/hashicorp.py, shared with Vault), the
  version pinned.
- One server (bootstrap_expect 1), running as its own account; its serf port listens on
  loopback only (gossip is between servers, and there is one). Clients run as root, which
  the exec driver needs. Both are checked with `nomad config validate` before a restart.
- ACLs on, bootstrapped once through the API; the management token and the servers'
  gossip key live in a 0600 file beside the inventory on the control machine
  (`<inventory stem>.nomad-keys.json`), never on a host but in the server's 0640 config.
- TLS for HTTP and RPC from the platform CA (tasks/platform_ca.py) when the role has it:
  `server.<region>.nomad` / `client.<region>.nomad`, as verify_server_hostname requires.
  A client's key is made on its worker; only its signing request visits the orchestrator.
- The job is registered from the control machine only when Nomad's own plan of it shows a
  difference, and only over the version planned against (infra/nomad.py).
"""

from __future__ import annotations

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.operations import apt

from infra import hashicorp
from infra import nomad as nomad_state
from infra.component import Component
from infra.components import Catalogue
from infra.facts import q
from infra.operations import (
    certificate_signed_on_host,
    digest,
    directory,
    file_content,
    signed_certificate,
    system_accounts,
    systemd_unit,
)
from infra.render import render
from infra.settings import HostSettings
from settings.base import Base
from settings.control import Control
from settings.inventory import Addresses
from settings.nomad import Nomad
from settings.platform_ca import CA_CERT, CA_KEY, TRUSTED_CA
from settings.runtime import Runtime
from settings.vault import Vault
from settings.worker import Worker

NOMAD_USER = "nomad"
BINARY = "/usr/bin/nomad"
UNIT = "nomad.service"
CONFDIR = "/etc/autocode/nomad"
CONFIG = f"{CONFDIR}/agent.hcl"
TLS_DIR = f"{CONFDIR}/tls"
JOB_ID = "autocode-worker"
# The client's name for the data tree, which the job mounts.
DATA_VOLUME = "autocode-data"
# Nomad's own default chroot_env (client config docs): setting the option replaces it.
DEFAULT_CHROOT_ENV = ("/bin", "/etc", "/lib", "/lib32", "/lib64", "/run/resolvconf",
                      "/run/systemd/resolve", "/sbin", "/usr")

COMPONENT = Component(
    name="nomad",
    settings=Nomad,
    # Clients dial the server's RPC port; the API serves the CLI on the workers too.
    worker_ports=lambda nomad: nomad.ports(),
    # And nobody else on the uplink but the control machine, for the API (RPC is mutual
    # TLS, but no one there has a business with it either).
    management_ports=lambda nomad: nomad.ports(),
)


# -- configuration, built from plain data (the unit tests render these) ---------------------


def tls_files(catalogue: Catalogue, role: str) -> dict[str, str] | None:
    """The agent's certificate, key and CA when the platform CA is one of the role's
    components; None otherwise (plain HTTP and RPC)."""
    if not catalogue.has_certificate_authority(role):
        return None
    return {"ca": TRUSTED_CA, "cert": f"{TLS_DIR}/agent.crt",
            "key": f"{TLS_DIR}/agent.key"}


def data_dir(base: Base) -> str:
    return f"{base.data_root}/nomad"


def server_config(settings: HostSettings, node_name: str, advertise: str, gossip_key: str,
                  tls: dict[str, str] | None) -> str:
    nomad = settings[Nomad]
    return render("nomad/server.hcl.j2", node_name=node_name, region=nomad.nomad_region,
                  datacenter=nomad.nomad_datacenter, data_dir=data_dir(settings[Base]),
                  advertise=advertise, http_port=nomad.nomad_http_port,
                  rpc_port=nomad.nomad_rpc_port, serf_port=nomad.nomad_serf_port,
                  gossip_key=gossip_key, tls=tls)


def chroot_env(base: Base) -> dict[str, str]:
    # config_dir is under /etc by default; named as well for a site that moves it.
    paths = [*DEFAULT_CHROOT_ENV, base.install_dir, base.config_dir]
    return {p: p for p in dict.fromkeys(paths)}


def client_config(settings: HostSettings, node_name: str, server: str,
                  tls: dict[str, str] | None) -> str:
    nomad, base, runtime = settings[Nomad], settings[Base], settings[Runtime]
    meta = {"agent_type": runtime.agent_type, "worker_id": node_name,
            "daily_budget_usd": runtime.daily_budget_usd, "project_id": runtime.project_id}
    return render("nomad/client.hcl.j2", node_name=node_name, region=nomad.nomad_region,
                  datacenter=nomad.nomad_datacenter, data_dir=data_dir(base),
                  http_port=nomad.nomad_http_port, rpc_port=nomad.nomad_rpc_port,
                  server=server, meta=meta, chroot_env=chroot_env(base), volume=DATA_VOLUME,
                  data_root=base.data_root, tls=tls)


def worker_job(settings: HostSettings, count: int, orchestrator_address: str) -> str:
    """The seed's job: one agent on each of `count` workers."""
    nomad, base = settings[Nomad], settings[Base]
    return render("nomad/autocode-worker.nomad.hcl.j2", job_id=JOB_ID,
                  region=nomad.nomad_region, datacenter=nomad.nomad_datacenter,
                  count=count, volume=DATA_VOLUME, user=base.service_user,
                  command=f"{base.runtime_venv}/bin/autocode-worker",
                  worker_config=base.worker_config, data_root=base.data_root,
                  orchestrator_url=settings[Worker].url_of_orchestrator(
                      orchestrator_address, settings[Control].control_worker_port),
                  cores=nomad.nomad_task_cores, memory_mb=nomad.nomad_task_memory_mb)


def tls_names(kind: str, region: str) -> tuple[str, ...]:
    # Nomad's verify_server_hostname checks this name; the CLI on the host uses loopback.
    return (f"{kind}.{region}.nomad", "localhost", "127.0.0.1")


# -- deploy ---------------------------------------------------------------------------------


def _orchestrator_host():
    return inventory.get_group("orchestrator")[0]


def _orchestrator_address(orch) -> str:
    """Where workers reach the orchestrator: its address on their network."""
    return Addresses.of(orch).gateway()


def _session(state, catalogue: Catalogue) -> nomad_state.Session:
    orch = _orchestrator_host()
    nomad = Nomad.of(orch)
    tls = tls_files(catalogue, "orchestrator")
    url = nomad.nomad_api_url or (f"{'https' if tls else 'http'}://"
                                  f"{Addresses.of(orch).ssh_hostname}:{nomad.nomad_http_port}")
    return nomad_state.session(state, orch, url, nomad.keys_file(),
                               tls["ca"] if tls else None)


def _install(nomad: Nomad):
    # HashiCorp's key: one setting for Vault and Nomad, the vault component's.
    sources = hashicorp.apt_repository(Vault.of(host).apt_key_fingerprint)
    return apt.packages(name=f"Nomad {nomad.nomad_version}",
                        packages=[f"nomad={nomad.nomad_version}-1"], update=sources.changed,
                        cache_time=Base.of(host).apt_cache_seconds)


def _folders(owner: str, tls) -> tuple[str, ...]:
    folders = [(CONFDIR, "root", owner, "750"), (data_dir(Base.of(host)), owner, owner, "700")]
    if tls:
        folders.append((TLS_DIR, "root", owner, "750"))
    batch = tuple(path for path, *_ in folders) + (CONFIG,) + (
        (tls["cert"], tls["key"]) if tls else ())
    for path, user, group, mode in folders:
        directory(name=f"Folder {path}", path=path, user=user, group=group, mode=mode,
                  batch=batch)
    return batch


def _agent(role: str, user: str, config: str, restart_when: tuple, batch) -> object:
    config_op = file_content(name="Nomad configuration", path=CONFIG, text=config,
                             user="root", group=user, mode="640", batch=batch)
    return systemd_unit(
        name=f"Unit {UNIT}", unit=UNIT,
        text=render("nomad/nomad.service.j2", role=role, user=user, binary=BINARY,
                    config=CONFIG, confdir=CONFDIR),
        inputs={"config": digest(config), "binary": f"nomad {Nomad.of(host).nomad_version}"},
        restart_when=(config_op, *restart_when),
        check_command=f"{BINARY} config validate {q(CONFDIR)}")


@deploy("Nomad server")
def orchestrator(catalogue: Catalogue) -> None:
    settings = HostSettings.of(host)
    if not settings[Nomad].enabled:
        return
    region = settings[Nomad].nomad_region
    tls = tls_files(catalogue, "orchestrator")
    nomad = _session(host.state, catalogue)
    system_accounts(name="Nomad's account", users=(NOMAD_USER,))
    package = _install(settings[Nomad])
    batch = _folders(NOMAD_USER, tls)
    restart_when = [package]
    if tls:
        names = (*tls_names("server", region), host.name,
                 str(settings[Addresses].ssh_hostname), _orchestrator_address(host))
        restart_when.append(signed_certificate(
            name="Nomad server's TLS certificate", cert=tls["cert"], key=tls["key"],
            ca_cert=CA_CERT, ca_key=CA_KEY,
            common_name=f"server.{region}.nomad", names=names, user="root",
            group=NOMAD_USER, batch=batch))
    nomad_state.nomad_gossip_key_kept(name="Nomad gossip key kept on the control machine",
                                      nomad=nomad)
    config = server_config(settings, host.name, _orchestrator_address(host),
                           nomad.gossip_key(), tls)
    unit = _agent("server", NOMAD_USER, config, tuple(restart_when), batch)
    nomad_state.nomad_acl_bootstrapped(name="Nomad ACLs bootstrapped", nomad=nomad,
                                       restarted=(unit,))
    workers = inventory.get_group("workers")
    nomad_state.nomad_job_registered(
        name=f"Nomad job {JOB_ID}", nomad=nomad, job_id=JOB_ID,
        hcl=worker_job(settings, len(workers), _orchestrator_address(host)))


@deploy("Nomad client")
def worker(catalogue: Catalogue) -> None:
    settings = HostSettings.of(host)
    if not settings[Nomad].enabled:
        return
    region = settings[Nomad].nomad_region
    orch = _orchestrator_host()
    tls = tls_files(catalogue, "worker")
    package = _install(settings[Nomad])
    batch = _folders("root", tls)
    restart_when = [package]
    if tls:
        restart_when.append(certificate_signed_on_host(
            name="Nomad client's TLS certificate", signer=orch.name,
            signer_ca_cert=CA_CERT, signer_ca_key=CA_KEY,
            cert=tls["cert"], key=tls["key"], ca_cert=tls["ca"],
            common_name=f"client.{region}.nomad",
            names=tls_names("client", region), user="root", group="root",
            # One worker at a time: the signings share the orchestrator's connection
            # (several at once hung the log forwarder's, tasks/log_forwarding.py).
            batch=batch, _serial=True))
    config = client_config(settings, host.name, _orchestrator_address(orch), tls)
    _agent("client", "root", config, tuple(restart_when), batch)
