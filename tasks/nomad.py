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

import re
from pathlib import Path

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.operations import apt

from infra import components, hashicorp
from infra import nomad as nomad_state
from infra.component import Component
from infra.facts import q
from infra.inventory_file import inventory_path
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
from infra.validation import Problems, check_private_file, is_number, is_port
from tasks import platform_ca

RUNNERS = {
    "nomad": "agents run as the Nomad job autocode-worker (the production default)",
    "systemd": "one autocode-worker systemd unit per worker, no Nomad (the lab's choice)",
}
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
NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def enabled(data) -> bool:
    return data.get("worker_runner") == "nomad"


def keys_file(data) -> Path:
    configured = data.get("nomad_keys_file")
    if configured:
        return Path(configured).expanduser()
    inv = inventory_path()
    return inv.with_name(f"{inv.stem}.nomad-keys.json")


def check(problems: Problems, role: str, data) -> None:
    runner = data.get("worker_runner")
    if runner not in RUNNERS:
        problems.add("worker_runner", f"{runner!r} is not a worker runner; use "
                     + "; or ".join(f"{name} ({what})" for name, what in RUNNERS.items()))
    version = data.get("nomad_version")
    if not (isinstance(version, str) and re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", version)):
        problems.add("nomad_version", f"{version!r} is not a version; pin one that HashiCorp's "
                     "apt repository has, e.g. 1.9.7")
    for field, example in (("nomad_region", "global"), ("nomad_datacenter", "dc1")):
        # The region is part of the TLS names server.<region>.nomad: a DNS label.
        if not (isinstance(data.get(field), str) and NAME.fullmatch(data[field])):
            problems.add(field, f"{data.get(field)!r} is not a name of lowercase letters, "
                         f"digits and dashes, e.g. {example}")
    ports = [data.get(f"nomad_{kind}_port") for kind in ("http", "rpc", "serf")]
    # Each one's range is checked with every *_port (infra/validation.py).
    if all(is_port(p) for p in ports) and len(set(ports)) != len(ports):
        problems.add("nomad_http_port", f"nomad_http_port, nomad_rpc_port and nomad_serf_port "
                     f"must differ; they are {ports}")
    cores = data.get("nomad_task_cores")
    if not (isinstance(cores, int) and not isinstance(cores, bool) and 1 <= cores <= 256):
        problems.add("nomad_task_cores", f"{cores!r}: give the whole CPU cores each agent "
                     "reserves, e.g. 4")
    memory = data.get("nomad_task_memory_mb")
    if not (is_number(memory) and int(memory) == memory and memory >= 128):
        problems.add("nomad_task_memory_mb", f"{memory!r}: give each agent's memory in MB, at "
                     "least 128, e.g. 2048")
    url = data.get("nomad_api_url")
    if url is not None and not (isinstance(url, str) and url.startswith(("https://",
                                                                          "http://"))):
        problems.add("nomad_api_url", f"{url!r} is not a URL; e.g. https://10.0.0.2:4646, or "
                     "leave it unset")
    keys = data.get("nomad_keys_file")
    if keys is not None and not (isinstance(keys, str) and keys):
        problems.add("nomad_keys_file", f"{keys!r} is not a path on the control machine")
    elif role == "orchestrator" and enabled(data) and keys_file(data).exists():
        check_private_file(problems, "nomad_keys_file", str(keys_file(data)))


def _worker_ports(data) -> list[int]:
    return [data["nomad_http_port"], data["nomad_rpc_port"]] if enabled(data) else []


COMPONENT = Component(
    name="nomad",
    settings={
        # How the agents run on the workers: nomad or systemd (RUNNERS).
        "worker_runner": "nomad",
        "nomad_version": "1.9.7",
        "nomad_region": "global",
        "nomad_datacenter": "dc1",
        "nomad_http_port": 4646,
        "nomad_rpc_port": 4647,
        "nomad_serf_port": 4648,
        # What each agent reserves on its worker.
        "nomad_task_cores": 4,
        "nomad_task_memory_mb": 2048,
        # Control-machine path of the keys file; default: beside the inventory file.
        "nomad_keys_file": None,
        # How the control machine reaches the API; default <scheme>://<orchestrator>:http.
        "nomad_api_url": None,
    },
    check=check,
    # Clients dial the server's RPC port; the API serves the CLI on the workers too.
    worker_ports=_worker_ports,
    # And nobody else on the uplink but the control machine, for the API (RPC is mutual
    # TLS, but no one there has a business with it either).
    management_ports=_worker_ports,
)


# -- configuration, built from plain data (the unit tests render these) ---------------------


def tls_files(role: str) -> dict[str, str] | None:
    """The agent's certificate, key and CA when the platform CA is one of the role's
    components; None otherwise (plain HTTP and RPC)."""
    if not any(c.name == "platform_ca" for c in components.of_role(role)):
        return None
    return {"ca": platform_ca.TRUSTED_CA, "cert": f"{TLS_DIR}/agent.crt",
            "key": f"{TLS_DIR}/agent.key"}


def data_dir(data) -> str:
    return f"{data['data_root']}/nomad"


def server_config(data, node_name: str, advertise: str, gossip_key: str,
                  tls: dict[str, str] | None) -> str:
    return render("nomad/server.hcl.j2", node_name=node_name, region=data["nomad_region"],
                  datacenter=data["nomad_datacenter"], data_dir=data_dir(data),
                  advertise=advertise, http_port=data["nomad_http_port"],
                  rpc_port=data["nomad_rpc_port"], serf_port=data["nomad_serf_port"],
                  gossip_key=gossip_key, tls=tls)


def chroot_env(data) -> dict[str, str]:
    # config_dir is under /etc by default; named as well for a site that moves it.
    paths = [*DEFAULT_CHROOT_ENV, data["install_dir"], data["config_dir"]]
    return {p: p for p in dict.fromkeys(paths)}


def client_config(data, node_name: str, server: str, tls: dict[str, str] | None) -> str:
    meta = {"agent_type": data["agent_type"], "worker_id": node_name,
            "daily_budget_usd": data["daily_budget_usd"], "project_id": data["project_id"]}
    return render("nomad/client.hcl.j2", node_name=node_name, region=data["nomad_region"],
                  datacenter=data["nomad_datacenter"], data_dir=data_dir(data),
                  http_port=data["nomad_http_port"], rpc_port=data["nomad_rpc_port"],
                  server=server, meta=meta, chroot_env=chroot_env(data), volume=DATA_VOLUME,
                  data_root=data["data_root"], tls=tls)


def worker_job(data, count: int, orchestrator_address: str) -> str:
    """The seed's job: one agent on each of `count` workers."""
    return render("nomad/autocode-worker.nomad.hcl.j2", job_id=JOB_ID,
                  region=data["nomad_region"], datacenter=data["nomad_datacenter"],
                  count=count, volume=DATA_VOLUME, user=data["service_user"],
                  command=f"{data['install_dir']}/venv/bin/autocode-worker",
                  worker_config=f"{data['config_dir']}/worker.yaml",
                  data_root=data["data_root"],
                  orchestrator_url=f"http://{orchestrator_address}",
                  cores=data["nomad_task_cores"], memory_mb=int(data["nomad_task_memory_mb"]))


def tls_names(kind: str, region: str) -> tuple[str, ...]:
    # Nomad's verify_server_hostname checks this name; the CLI on the host uses loopback.
    return (f"{kind}.{region}.nomad", "localhost", "127.0.0.1")


# -- deploy ---------------------------------------------------------------------------------


def _orchestrator_host():
    return inventory.get_group("orchestrator")[0]


def _orchestrator_address(orch) -> str:
    """Where workers reach the orchestrator: its address on their network."""
    return str(orch.data.get("worker_address") or orch.data.get("orchestrator_address")
               or orch.data.ssh_hostname)


def _session(state) -> nomad_state.Session:
    orch = _orchestrator_host()
    data = orch.data
    tls = tls_files("orchestrator")
    url = data.get("nomad_api_url") or \
        f"{'https' if tls else 'http'}://{data.ssh_hostname}:{data.nomad_http_port}"
    return nomad_state.session(state, orch, url, keys_file(data.dict()),
                               tls["ca"] if tls else None)


def _install(data):
    sources = hashicorp.apt_repository(data)
    return apt.packages(name=f"Nomad {data.nomad_version}",
                        packages=[f"nomad={data.nomad_version}-1"], update=sources.changed,
                        cache_time=data.apt_cache_seconds)


def _folders(owner: str, tls) -> tuple[str, ...]:
    data = host.data
    folders = [(CONFDIR, "root", owner, "750"), (data_dir(data.dict()), owner, owner, "700")]
    if tls:
        folders.append((TLS_DIR, "root", owner, "750"))
    batch = tuple(path for path, *_ in folders) + (CONFIG,) + (
        (tls["cert"], tls["key"]) if tls else ())
    for path, user, group, mode in folders:
        directory(name=f"Folder {path}", path=path, user=user, group=group, mode=mode,
                  batch=batch)
    return batch


def _agent(role: str, user: str, config: str, restart_when: tuple, batch) -> object:
    data = host.data
    config_op = file_content(name="Nomad configuration", path=CONFIG, text=config,
                             user="root", group=user, mode="640", batch=batch)
    return systemd_unit(
        name=f"Unit {UNIT}", unit=UNIT,
        text=render("nomad/nomad.service.j2", role=role, user=user, binary=BINARY,
                    config=CONFIG, confdir=CONFDIR),
        inputs={"config": digest(config), "binary": f"nomad {data.nomad_version}"},
        restart_when=(config_op, *restart_when),
        check_command=f"{BINARY} config validate {q(CONFDIR)}")


@deploy("Nomad server")
def orchestrator() -> None:
    data = host.data
    if not enabled(data):
        return
    tls = tls_files("orchestrator")
    nomad = _session(host.state)
    system_accounts(name="Nomad's account", users=(NOMAD_USER,))
    package = _install(data)
    batch = _folders(NOMAD_USER, tls)
    restart_when = [package]
    if tls:
        names = (*tls_names("server", data.nomad_region), host.name, str(data.ssh_hostname),
                 _orchestrator_address(host))
        restart_when.append(signed_certificate(
            name="Nomad server's TLS certificate", cert=tls["cert"], key=tls["key"],
            ca_cert=platform_ca.CA_CERT, ca_key=platform_ca.CA_KEY,
            common_name=f"server.{data.nomad_region}.nomad", names=names, user="root",
            group=NOMAD_USER, batch=batch))
    nomad_state.nomad_gossip_key_kept(name="Nomad gossip key kept on the control machine",
                                      nomad=nomad)
    config = server_config(data.dict(), host.name, _orchestrator_address(host),
                           nomad.gossip_key(), tls)
    unit = _agent("server", NOMAD_USER, config, tuple(restart_when), batch)
    nomad_state.nomad_acl_bootstrapped(name="Nomad ACLs bootstrapped", nomad=nomad,
                                       restarted=(unit,))
    workers = inventory.get_group("workers")
    nomad_state.nomad_job_registered(
        name=f"Nomad job {JOB_ID}", nomad=nomad, job_id=JOB_ID,
        hcl=worker_job(data.dict(), len(workers), _orchestrator_address(host)))


@deploy("Nomad client")
def worker() -> None:
    data = host.data
    if not enabled(data):
        return
    orch = _orchestrator_host()
    tls = tls_files("worker")
    package = _install(data)
    batch = _folders("root", tls)
    restart_when = [package]
    if tls:
        restart_when.append(certificate_signed_on_host(
            name="Nomad client's TLS certificate", signer=orch.name,
            signer_ca_cert=platform_ca.CA_CERT, signer_ca_key=platform_ca.CA_KEY,
            cert=tls["cert"], key=tls["key"], ca_cert=tls["ca"],
            common_name=f"client.{data.nomad_region}.nomad",
            names=tls_names("client", data.nomad_region), user="root", group="root",
            # One worker at a time: the signings share the orchestrator's connection
            # (several at once hung the log forwarder's, tasks/log_forwarding.py).
            batch=batch, _serial=True))
    config = client_config(data.dict(), host.name, _orchestrator_address(orch), tls)
    _agent("client", "root", config, tuple(restart_when), batch)
