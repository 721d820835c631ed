"""The elasticsearch component's settings, and what other components read of it: how the
orchestrator's own clients (the traffic shipper, Filebeat) reach the cluster, the API key
in force, Elastic's apt repository (shared with Filebeat), the platform's data streams."""

from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator
from pyinfra import logger as log

from autocode.problems import Problems, ipv4_networks
from infra.apt_repository import Repository, check_fingerprint
from infra.control_api import per_stage
from infra.elasticsearch import api_key_from_file
from infra.facts import FileText
from infra.operations import digest
from infra.settings import (
    Describe,
    HostSettings,
    Port,
    SettingProblem,
    Settings,
    Version,
    checked,
    days,
    private_file,
    refuse_unless,
)
from infra.vault import KV_MOUNT, VaultSetupError
from infra.vault_api import VaultAPIError
from settings import vault as vault_settings

MODES = {
    "local": "a node on the orchestrator, from Elastic's apt repository",
    "external": "an existing cluster at elasticsearch_url; nothing installed",
    "none": "no Elasticsearch: the traffic shipper keeps its spool",
}
CLIENT_DIR = "/etc/autocode/elasticsearch"
API_KEY_FILE = f"{CLIENT_DIR}/api-key"
CA_FILE = f"{CLIENT_DIR}/ca.crt"
VAULT_KEY_FIELD = "api_key"  # the field of elasticsearch_credentials_vault_path's secret
# Elastic's package signing key (elastic.co, "Install Elasticsearch with Debian Package").
KEY_FINGERPRINT = "46095ACC8548582C1A2699A9D27D666CD88E42B4"
MAX_HEAP_MB = 31 * 1024  # above ~31 GB the JVM loses compressed object pointers
STREAMS = {"logs": "autocode-logs", "traffic": "autocode-traffic"}
SIZE = re.compile(r"[1-9][0-9]*(b|kb|mb|gb|tb)")
URL = re.compile(r"^https?://[^/\s:]+(:[0-9]+)?(/\S*)?$")
RetentionDays = days(1, 36500, 30)


def repository(version: str) -> Repository:
    major = str(version).split(".")[0]
    return Repository(
        name="Elastic", key_url="https://artifacts.elastic.co/GPG-KEY-elasticsearch",
        keyring="/usr/share/keyrings/elastic-archive-keyring.gpg",
        sources="/etc/apt/sources.list.d/elastic.sources",
        uris=f"https://artifacts.elastic.co/packages/{major}.x/apt", suite="stable",
        components="main",
        header="# Managed by autocode (tasks/elasticsearch.py): Elastic's packages "
               "(Elasticsearch, Filebeat).",
        setting="elastic_apt_key_fingerprint")


def _is_ca_file(value: str) -> bool:
    path = Path(value).expanduser()
    return path.is_file() and "BEGIN CERTIFICATE" in path.read_text()


def _check_credentials(problems: Problems, field: str, path: str) -> None:
    """A 0600 file holding an encoded API key (never echoed)."""
    if not private_file(problems, field, path):
        return
    try:
        api_key_from_file(Path(path).expanduser().read_text())
    except (OSError, ValueError) as exc:
        problems.add(field, f"{path} {exc}", "write the `encoded` value of Elasticsearch's "
                     "create-API-key answer on one line")


def _snapshot_repository(value) -> bool:
    return value is None or (isinstance(value.get("type"), str)
                             and isinstance(value.get("settings", {}), dict))


class Elasticsearch(Settings):
    elasticsearch_mode: Annotated[str, refuse_unless(
        lambda v: v in MODES,
        lambda v: f"{v!r} is not a mode; use " + "; or ".join(
            f"{m} ({what})" for m, what in MODES.items())), Describe("a mode")] = "local"
    """local: a node on the orchestrator; external: your cluster at elasticsearch_url;
    none: nothing (the traffic shipper keeps its spool)."""
    elasticsearch_version: Annotated[Version, Describe(
        "a version", "pin one that Elastic's apt repository has, e.g. 8.19.0")] = "8.19.0"
    """The local node's version, pinned (Filebeat's is its own)."""
    elastic_apt_key_fingerprint: Annotated[str, checked(
        check_fingerprint, KEY_FINGERPRINT)] = KEY_FINGERPRINT
    """Elastic's apt signing key (for Elasticsearch and Filebeat)."""
    elasticsearch_port: Annotated[Port, Describe("a TCP port", "e.g. 9200")] = 9200
    """The local node's HTTP port (loopback and elasticsearch_allowed_networks only)."""
    elasticsearch_url: Annotated[str | None, refuse_unless(
        lambda v: v is None or bool(URL.match(v)),
        lambda v: f"{v!r} is not an http(s) URL with a scheme; give the cluster's address, "
                  "e.g. https://logs.example.com:9243"), Describe("an http(s) URL")] = None
    """External: the cluster's URL."""
    elasticsearch_credentials_file: Annotated[str | None, checked(
        lambda p, f, v: v is None or _check_credentials(p, f, v))] = None
    """External: a 0600 control-machine file holding the cluster's encoded API key (unset:
    no authentication)."""
    elasticsearch_credentials_vault_path: Annotated[Any, refuse_unless(
        lambda v: v is None or vault_settings.is_secret_path(v),
        lambda v: f"{str(v)[:60]!r} is not a secret path of the platform's Vault; use letters, "
                  "digits, _ - . between single /, e.g. elasticsearch/autocode")] = None
    """Or the key from the platform's Vault: the KV secret (e.g. elasticsearch/autocode)
    whose api_key field holds it."""
    elasticsearch_ca_file: Annotated[str | None, refuse_unless(
        lambda v: v is None or _is_ca_file(v),
        lambda v: f"{v!r} is not a PEM CA certificate file on the control machine; give the CA "
                  "the cluster's certificate is signed by, or leave it unset for the system's "
                  "trust store")] = None
    """External: the CA of an https cluster (unset: the system's trust store)."""
    elasticsearch_allowed_networks: Annotated[list, checked(
        ipv4_networks, "[] admits loopback only")] = []
    """Local: who besides loopback may reach the node (security is off): IPv4 networks."""
    elasticsearch_heap_mb: Annotated[int | None, Field(ge=256, le=MAX_HEAP_MB), Describe(
        f"the JVM heap in MB, from 256 to {MAX_HEAP_MB}",
        "above that the JVM loses compressed pointers; or leave it unset for half the "
        "host's memory")] = None
    """Local: the JVM heap in MB; unset: half the host's memory, at most 31 GB."""
    log_retention_days: RetentionDays = 30
    """Days a log backing index (and the orchestrator's copies of worker logs) is kept."""
    traffic_retention_days: RetentionDays = 90
    """Days a traffic backing index is kept."""
    elasticsearch_rollover_size: Annotated[str, refuse_unless(
        lambda v: bool(SIZE.fullmatch(v)), lambda v: f"{v!r} is not a size; write e.g. 50gb"),
        Describe("a size", "write e.g. 50gb")] = "50gb"
    """A new backing index daily or at this primary shard size."""
    elasticsearch_snapshot_keep: Annotated[int, Field(ge=1, le=1000), Describe(
        "how many daily snapshots to keep", "a whole number from 1 to 1000, e.g. 7")] = 7
    """Daily snapshots (SLM) kept."""
    elasticsearch_snapshot_schedule: str = "0 30 1 * * ?"
    """When the daily snapshot is taken (Elasticsearch's cron syntax)."""
    elasticsearch_snapshot_repository: Annotated[dict | None, refuse_unless(
        _snapshot_repository,
        lambda v: f"{v!r}: give Elasticsearch's repository body, e.g. {{type: s3, settings: "
                  "{bucket: backups}}, or leave it unset for an fs repository under "
                  "<data_root>/backups/elasticsearch")] = None
    """The snapshot repository's body; unset: an fs repository under
    <data_root>/backups/elasticsearch (path.repo of the node)."""

    @field_validator("elasticsearch_url")
    @classmethod
    def _url_when_external(cls, url: str | None, info: ValidationInfo) -> str | None:
        if url is None and info.data.get("elasticsearch_mode") == "external":
            raise SettingProblem("None is not an http(s) URL with a scheme; give the "
                                 "cluster's address, e.g. https://logs.example.com:9243 "
                                 "(elasticsearch_mode: external needs it)")
        return url

    def rules(self, problems: Problems, host: HostSettings) -> None:
        self._vault_rules(problems, host)

    def _vault_rules(self, problems: Problems, host: HostSettings) -> None:
        field = "elasticsearch_credentials_vault_path"
        path = self.elasticsearch_credentials_vault_path
        if path is None:
            return
        if self.elasticsearch_credentials_file is not None:
            problems.add(field, "and elasticsearch_credentials_file are both set",
                         "give the API key in one of them")
        elif self.elasticsearch_mode != "external":
            problems.add(field, "is for elasticsearch_mode: external (the orchestrator's own "
                         "node runs without security)", "unset it, or set the mode")
        else:
            seed = self.seeded_secret(host.get(vault_settings.Vault))
            if seed is not None:
                try:
                    api_key_from_file(str(seed.get(VAULT_KEY_FIELD) or ""))
                except ValueError as exc:
                    # Names only: a value of the seed never reaches a message.
                    problems.add(field, f"vault_seed_file's {path} {exc} in its "
                                 f"{VAULT_KEY_FIELD} field", "write the `encoded` value of "
                                 "Elasticsearch's create-API-key answer there (it is put at "
                                 f"{KV_MOUNT}/{path})")

    def seeded_secret(self, vault: vault_settings.Vault | None) -> dict | None:
        """The fields vault_seed_file gives elasticsearch_credentials_vault_path's secret,
        when it gives it any (this apply writes them to Vault); None otherwise, or when the
        seed cannot be read (the vault component reports that)."""
        doc = vault.seed() if vault is not None else None
        fields = (doc or {}).get(self.elasticsearch_credentials_vault_path)
        return fields if isinstance(fields, dict) else None

    # -- what the orchestrator's clients use ------------------------------------------

    def private_ports(self) -> dict[int, list[str]]:
        if self.elasticsearch_mode != "local":
            return {}
        return {self.elasticsearch_port: [str(ipaddress.ip_network(str(n)))
                                          for n in self.elasticsearch_allowed_networks]}

    def client(self, api_key: str | None) -> dict:
        """How the orchestrator's own clients (the traffic shipper, Filebeat) reach the
        cluster: url, and the on-host paths of the API key and CA files when there are any
        (`api_key`: the key in force, see `credentials`)."""
        if self.elasticsearch_mode == "external":
            return {"url": self.elasticsearch_url.rstrip("/"),
                    "api_key_file": API_KEY_FILE if api_key else None,
                    "ca_certs": CA_FILE if self.elasticsearch_ca_file else None}
        return {"url": f"http://127.0.0.1:{self.elasticsearch_port}", "api_key_file": None,
                "ca_certs": None}

    def ca_text(self) -> str | None:
        if not self.elasticsearch_ca_file:
            return None
        return Path(self.elasticsearch_ca_file).expanduser().read_text()


@dataclass(frozen=True)
class Credentials:
    """The external cluster's API key in this apply.

    write: the key the orchestrator's key file is to hold (None: leave the file as it is);
    in_force: the key the cluster's clients use once the apply is done (the one written,
    else the one on the orchestrator; None: no authentication);
    waiting: why a key configured in Vault could not be read now, if it could not."""

    write: str | None = None
    in_force: str | None = None
    waiting: str | None = None

    def filebeat_key(self) -> str | None:
        """Filebeat's output takes the key as `id:api_key`, the decoded form."""
        return base64.b64decode(self.in_force).decode() if self.in_force else None


def credentials(settings: HostSettings, state, orchestrator) -> Credentials:
    """From elasticsearch_credentials_file, or from elasticsearch_credentials_vault_path
    (with the run's Vault session and the orchestrator's key file), once per run and
    stage. `orchestrator`: the inventory's orchestrator host."""
    es = settings[Elasticsearch]
    if es.elasticsearch_mode != "external":
        return Credentials()
    if es.elasticsearch_credentials_file:
        key = api_key_from_file(
            Path(es.elasticsearch_credentials_file).expanduser().read_text())
        return Credentials(write=key, in_force=key)
    if not es.elasticsearch_credentials_vault_path:
        return Credentials()
    return per_stage(state, "elasticsearch_credentials", lambda: from_vault(
        es, settings.get(vault_settings.Vault),
        lambda: vault_settings.deploy_session(state, orchestrator), orchestrator))


def from_vault(es: Elasticsearch, vault: vault_settings.Vault | None, session_of_run,
               orchestrator: Any) -> Credentials:
    """The key elasticsearch_credentials_vault_path names: from vault_seed_file when the
    seed writes that secret in this apply, else read from Vault with the deploy's token
    (session_of_run() gives the run's infra.vault.Session), else the key the orchestrator
    (a pyinfra host) already has."""
    path = es.elasticsearch_credentials_vault_path
    where = f"{KV_MOUNT}/{path}"
    seeded = es.seeded_secret(vault)
    if seeded is not None:  # what this apply's seed puts in Vault (checked before connecting)
        key = api_key_from_file(str(seeded[VAULT_KEY_FIELD]))
        return Credentials(write=key, in_force=key)
    waiting = None
    try:
        session = session_of_run()
        if not session.usable():
            waiting = (f"Vault is not initialised and unsealed yet, so the API key at {where} "
                       "cannot be read")
        else:
            answer = session.admin().get(f"{KV_MOUNT}/data/{path}", ok=(404,))
            fields = ((answer or {}).get("data") or {}).get("data") or {}
            if VAULT_KEY_FIELD not in fields:
                waiting = (f"Vault has no {VAULT_KEY_FIELD} field at {where}; put the "
                           "cluster's encoded API key there (bao kv put "
                           f"-mount={KV_MOUNT} {path} {VAULT_KEY_FIELD}=...)")
            else:
                try:
                    key = api_key_from_file(str(fields[VAULT_KEY_FIELD]))
                    return Credentials(write=key, in_force=key)
                except ValueError as exc:
                    waiting = (f"the {VAULT_KEY_FIELD} field at {where} in Vault {exc}; put the "
                               "`encoded` value of Elasticsearch's create-API-key answer there")
    except (VaultAPIError, VaultSetupError) as exc:
        waiting = f"the API key at {where} could not be read from Vault: {exc}"
    on_host = orchestrator.get_fact(FileText, path=API_KEY_FILE)
    in_force = on_host.strip() if on_host else None
    log.warning(f"Elasticsearch: {waiting}; " + (
        f"the key already on {orchestrator.name} stays in use" if in_force else
        "the index management and the clients' key wait for a later apply"))
    return Credentials(in_force=in_force, waiting=waiting)


def client_inputs(es: Elasticsearch, key: Credentials) -> dict[str, str]:
    """Digests of the key and CA files the clients read at start: a service reading them
    is restarted when either changes (a rotated key, a renewed CA)."""
    inputs = {}
    if es.elasticsearch_mode == "external":
        if key.in_force:
            inputs["elasticsearch API key"] = digest(key.in_force)
        if es.elasticsearch_ca_file:
            inputs["elasticsearch CA"] = digest(es.ca_text())
    return inputs
