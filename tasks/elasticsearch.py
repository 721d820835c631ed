"""Elasticsearch: the node on the orchestrator (`elasticsearch_mode: local`), or an existing
cluster (`external`: Elastic Cloud or self-managed, at `elasticsearch_url`, nothing
installed), and in both the platform's index management through the REST API: lifecycle
(ILM) policies, index templates with explicit mappings, the `autocode-traffic` and
`autocode-logs` data streams, a snapshot repository and a daily snapshot (SLM) policy
(infra/elasticsearch.py: read, compare, write only what differs).

- Local: Elastic's signed apt repository (infra/apt_repository.py, shared with Filebeat),
  the version pinned; elasticsearch.yml as the seed has it (security off "for MVP
  simplicity", monitoring collection on), built as data and written as YAML; the JVM heap
  half the host's memory, at most 31 GB (compressed object pointers), unless
  `elasticsearch_heap_mb` says; `vm.max_map_count`; restarted only when one of those
  changed. Security off means anyone who reaches port 9200 owns the data: the
  orchestrator's firewall admits it from loopback and `elasticsearch_allowed_networks`
  only (empty by default), never from workers. The deploy itself reaches it through its
  SSH connection.
- External: the cluster's encoded API key from a 0600 file on the control machine, or from
  the platform's own Vault (`elasticsearch_credentials_vault_path`: the KV secret whose
  `api_key` field holds it, read with the deploy's token when the apply is planned, or
  taken from `vault_seed_file` when the seed writes that secret in this apply). Copied to
  the orchestrator for the traffic shipper (and Filebeat) only; when Vault cannot be read
  (not yet initialised, sealed, the secret not there yet), the key already on the
  orchestrator stays in use, and without one the index management waits, saying so.
- `none`: nothing; the traffic shipper keeps every record in its spool until a cluster
  appears (the lab's default, where Elastic's builds cannot be had).
"""

from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from pyinfra import host, inventory
from pyinfra import logger as log
from pyinfra.api import deploy
from pyinfra.operations import apt, server

from infra.apt_repository import Repository, apt_repository, check_fingerprint
from infra.component import Component
from infra.control_api import per_stage
from infra.elasticsearch import ElasticsearchAPI, Managed, api_key_from_file
from infra.elasticsearch import elasticsearch_objects as es_objects
from infra.facts import FileText, MemoryMB
from infra.operations import digest, directory, file_content, sysctls, systemd_unit
from infra.render import render
from infra.validation import Problems, check_ipv4_networks, check_private_file, is_port

MODES = {
    "local": "a node on the orchestrator, from Elastic's apt repository",
    "external": "an existing cluster at elasticsearch_url; nothing installed",
    "none": "no Elasticsearch: the traffic shipper keeps its spool",
}
ES_USER = "elasticsearch"
UNIT = "elasticsearch.service"
ES_CONFIG = "/etc/elasticsearch/elasticsearch.yml"
HEAP_OPTIONS = "/etc/elasticsearch/jvm.options.d/autocode-heap.options"
DROP_IN_DIR = "/etc/systemd/system/elasticsearch.service.d"
DROP_IN = f"{DROP_IN_DIR}/autocode.conf"
CLIENT_DIR = "/etc/autocode/elasticsearch"
API_KEY_FILE = f"{CLIENT_DIR}/api-key"
CA_FILE = f"{CLIENT_DIR}/ca.crt"
VAULT_KEY_FIELD = "api_key"  # the field of elasticsearch_credentials_vault_path's secret
# Elastic's package signing key (elastic.co, "Install Elasticsearch with Debian Package").
KEY_FINGERPRINT = "46095ACC8548582C1A2699A9D27D666CD88E42B4"
MAX_HEAP_MB = 31 * 1024  # above ~31 GB the JVM loses compressed object pointers
MAX_MAP_COUNT = 262144
STREAMS = {"logs": "autocode-logs", "traffic": "autocode-traffic"}
SNAPSHOT_REPOSITORY = "autocode-backups"
SLM_POLICY = "autocode-daily-snapshots"
SIZE = re.compile(r"[1-9][0-9]*(b|kb|mb|gb|tb)")


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


def elastic_repository(data):
    """Elastic's repository on this host (one sources file, whichever component asks)."""
    return apt_repository(repository(data.elasticsearch_version), data.elastic_apt_key_fingerprint)


def _positive_days(problems: Problems, field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 36500:
        problems.add(field, f"{value!r} is not a whole number of days from 1 to 36500; "
                     "e.g. 30")


def check(problems: Problems, role: str, data) -> None:
    mode = data.get("elasticsearch_mode")
    if mode not in MODES:
        problems.add("elasticsearch_mode", f"{mode!r} is not a mode; use "
                     + "; or ".join(f"{m} ({what})" for m, what in MODES.items()))
    for field in ("elasticsearch_version",):
        version = data.get(field)
        if not (isinstance(version, str) and re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", version)):
            problems.add(field, f"{version!r} is not a version; pin one that Elastic's apt "
                         "repository has, e.g. 8.19.0")
    check_fingerprint(problems, "elastic_apt_key_fingerprint",
                      data.get("elastic_apt_key_fingerprint"), KEY_FINGERPRINT)
    _positive_days(problems, "log_retention_days", data.get("log_retention_days"))
    _positive_days(problems, "traffic_retention_days", data.get("traffic_retention_days"))
    keep = data.get("elasticsearch_snapshot_keep")
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= 1000:
        problems.add("elasticsearch_snapshot_keep", f"{keep!r}: give how many daily snapshots "
                     "to keep, a whole number from 1 to 1000, e.g. 7")
    size = data.get("elasticsearch_rollover_size")
    if not (isinstance(size, str) and SIZE.fullmatch(size)):
        problems.add("elasticsearch_rollover_size", f"{size!r} is not a size; write e.g. 50gb")
    if not is_port(data.get("elasticsearch_port")):
        problems.add("elasticsearch_port", f"{data.get('elasticsearch_port')!r} is not a TCP "
                     "port; e.g. 9200")
    heap = data.get("elasticsearch_heap_mb")
    if heap is not None and (isinstance(heap, bool) or not isinstance(heap, int)
                             or not 256 <= heap <= MAX_HEAP_MB):
        problems.add("elasticsearch_heap_mb", f"{heap!r}: give the JVM heap in MB, from 256 "
                     f"to {MAX_HEAP_MB} (above that the JVM loses compressed pointers), or "
                     "leave it unset for half the host's memory")
    check_ipv4_networks(problems, "elasticsearch_allowed_networks",
                        data.get("elasticsearch_allowed_networks"), "[] admits loopback only")
    url = data.get("elasticsearch_url")
    if mode == "external" or url is not None:
        if not (isinstance(url, str) and re.match(r"^https?://[^/\s:]+(:[0-9]+)?(/\S*)?$", url)):
            problems.add("elasticsearch_url", f"{url!r} is not an http(s) URL with a scheme; "
                         "give the cluster's address, e.g. https://logs.example.com:9243"
                         + (" (elasticsearch_mode: external needs it)" if url is None else ""))
    credentials = data.get("elasticsearch_credentials_file")
    if credentials is not None and check_private_file(
            problems, "elasticsearch_credentials_file", credentials):
        try:
            api_key_from_file(Path(credentials).expanduser().read_text())
        except (OSError, ValueError) as exc:
            problems.add("elasticsearch_credentials_file", f"{credentials} {exc}; write the "
                         "`encoded` value of Elasticsearch's create-API-key answer on one line")
    _check_vault_credentials(problems, data)
    ca = data.get("elasticsearch_ca_file")
    if ca is not None and not (isinstance(ca, str) and Path(ca).expanduser().is_file()
                               and "BEGIN CERTIFICATE" in Path(ca).expanduser().read_text()):
        problems.add("elasticsearch_ca_file", f"{ca!r} is not a PEM CA certificate file on the "
                     "control machine; give the CA the cluster's certificate is signed by, or "
                     "leave it unset for the system's trust store")
    repo = data.get("elasticsearch_snapshot_repository")
    if repo is not None and not (isinstance(repo, dict) and isinstance(repo.get("type"), str)
                                 and isinstance(repo.get("settings", {}), dict)):
        problems.add("elasticsearch_snapshot_repository", f"{repo!r}: give Elasticsearch's "
                     "repository body, e.g. {type: s3, settings: {bucket: backups}}, or leave "
                     "it unset for an fs repository under <data_root>/backups/elasticsearch")


def _check_vault_credentials(problems: Problems, data) -> None:
    from infra.vault import KV_MOUNT
    from tasks.vault import is_secret_path

    field = "elasticsearch_credentials_vault_path"
    path = data.get(field)
    if path is None:
        return
    if not is_secret_path(path):
        problems.add(field, f"{str(path)[:60]!r} is not a secret path of the platform's Vault; "
                     "use letters, digits, _ - . between single /, e.g. elasticsearch/autocode")
    elif data.get("elasticsearch_credentials_file") is not None:
        problems.add(field, "and elasticsearch_credentials_file are both set; give the API key "
                     "in one of them")
    elif data.get("elasticsearch_mode") != "external":
        problems.add(field, "is for elasticsearch_mode: external (the orchestrator's own node "
                     "runs without security); unset it, or set the mode")
    else:
        seed = _seeded_secret(data)
        if seed is not None:
            try:
                api_key_from_file(str(seed.get(VAULT_KEY_FIELD) or ""))
            except ValueError as exc:
                # Names only: a value of the seed never reaches a message.
                problems.add(field, f"vault_seed_file's {path} {exc} in its {VAULT_KEY_FIELD} "
                             "field; write the `encoded` value of Elasticsearch's "
                             f"create-API-key answer there (it is put at {KV_MOUNT}/{path})")


def _seeded_secret(data) -> dict | None:
    """The fields vault_seed_file gives elasticsearch_credentials_vault_path's secret, when
    it gives it any (this apply writes them to Vault); None otherwise, or when the seed
    cannot be read (the vault component reports that)."""
    seed_file = data.get("vault_seed_file")
    if not seed_file:
        return None
    try:
        doc = yaml.safe_load(Path(seed_file).expanduser().read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    fields = doc.get(data["elasticsearch_credentials_vault_path"]) if isinstance(doc, dict) \
        else None
    return fields if isinstance(fields, dict) else None


def _private_ports(data) -> dict[int, list[str]]:
    if data.get("elasticsearch_mode") != "local":
        return {}
    return {data["elasticsearch_port"]: [str(ipaddress.ip_network(str(n)))
                                         for n in data["elasticsearch_allowed_networks"]]}


COMPONENT = Component(
    name="elasticsearch",
    settings={
        # local | external | none (MODES).
        "elasticsearch_mode": "local",
        "elasticsearch_version": "8.19.0",
        "elastic_apt_key_fingerprint": KEY_FINGERPRINT,
        "elasticsearch_port": 9200,
        # External: the cluster's URL, and a 0600 control-machine file holding an encoded
        # API key (unset: no authentication), and the CA of an https cluster (unset: the
        # system's trust store).
        "elasticsearch_url": None,
        "elasticsearch_credentials_file": None,
        # Or the key from the platform's Vault: the KV secret (e.g. elasticsearch/autocode)
        # whose api_key field holds it.
        "elasticsearch_credentials_vault_path": None,
        "elasticsearch_ca_file": None,
        # Local: who besides loopback may reach the node (security is off): IPv4 networks.
        "elasticsearch_allowed_networks": [],
        # Local: the JVM heap in MB; unset: half the host's memory, at most 31 GB.
        "elasticsearch_heap_mb": None,
        # Lifecycle: a new backing index daily or at this primary shard size, deleted
        # after the retention.
        "log_retention_days": 30,
        "traffic_retention_days": 90,
        "elasticsearch_rollover_size": "50gb",
        # Snapshots: daily at 01:30, keeping this many; the repository's body, unset: an
        # fs repository under <data_root>/backups/elasticsearch (path.repo of the node).
        "elasticsearch_snapshot_keep": 7,
        "elasticsearch_snapshot_schedule": "0 30 1 * * ?",
        "elasticsearch_snapshot_repository": None,
    },
    check=check,
    private_ports=_private_ports,
)


# -- configuration, built as data (the unit tests parse these) --------------------------------


def data_dir(data) -> str:
    return f"{data['data_root']}/elasticsearch"


def logs_dir(data) -> str:
    return f"{data['data_root']}/logs/orchestrator/elasticsearch"


def snapshot_dir(data) -> str:
    return f"{data['data_root']}/backups/elasticsearch"


def node_settings(data) -> dict:
    """elasticsearch.yml, as the seed's "Elasticsearch Configuration" has it."""
    return {
        "cluster.name": "autocode-cluster",
        "node.name": "autocode-node-1",
        "path.data": data_dir(data),
        "path.logs": logs_dir(data),
        "path.repo": [snapshot_dir(data)],
        "network.host": "0.0.0.0",
        "http.port": data["elasticsearch_port"],
        "discovery.type": "single-node",
        # The seed's choice "for MVP simplicity": the firewall is the only guard.
        "xpack.security.enabled": False,
        "xpack.security.enrollment.enabled": False,
        "xpack.security.http.ssl.enabled": False,
        "xpack.security.transport.ssl.enabled": False,
        "xpack.monitoring.collection.enabled": True,
        # The platform's streams are made by the deploy, with their templates: a client
        # writing before that (a shipper that was waiting for the node) is refused and
        # retries, rather than making a plain index that would block the stream's name.
        "action.auto_create_index": "-autocode-logs*,-autocode-traffic*,+*",
    }


def render_node_config(data) -> str:
    return render("elasticsearch/elasticsearch.yml.j2",
                  body=yaml.safe_dump(node_settings(data), sort_keys=False))


def heap_mb(data, memory_mb: int | None) -> int:
    if data.get("elasticsearch_heap_mb"):
        return int(data["elasticsearch_heap_mb"])
    return max(256, min(MAX_HEAP_MB, (memory_mb or 2048) // 2))


def _lifecycle(days: int, size: str) -> dict:
    return {"policy": {
        "_meta": {"managed_by": "autocode"},
        "phases": {
            # Daily granularity: one backing index a day (or sooner, at the size).
            "hot": {"actions": {"rollover": {"max_age": "1d", "max_primary_shard_size": size}}},
            "delete": {"min_age": f"{days}d", "actions": {"delete": {}}},
        },
    }}


def _kw(**extra) -> dict:
    return {"type": "keyword", **extra}


TRAFFIC_MAPPINGS = {
    "dynamic": True,
    "properties": {
        "@timestamp": {"type": "date"},
        "record_id": _kw(), "kind": _kw(), "verdict": _kw(), "reason": _kw(ignore_above=1024),
        "worker_id": _kw(), "client_ip": {"type": "ip"}, "server_ip": _kw(),
        "proxy_host": _kw(), "method": _kw(), "scheme": _kw(), "host": _kw(),
        "port": {"type": "integer"}, "url": _kw(ignore_above=8191), "http_version": _kw(),
        "status": {"type": "integer"},
        "request_headers": {"type": "flattened"}, "response_headers": {"type": "flattened"},
        "request_bytes": {"type": "long"}, "response_bytes": {"type": "long"},
        "duration_ms": {"type": "double"}, "error": {"type": "text"},
        "sni": _kw(), "tls": {"type": "boolean"},
        "bytes_from_client": {"type": "long"}, "bytes_from_server": {"type": "long"},
        "messages_from_client": {"type": "long"}, "messages_from_server": {"type": "long"},
    },
}

# loguru's serialize=True lines (autocode/logging.py) as Filebeat's ndjson parser puts them:
# `text` (the formatted line) and `record`; plus Filebeat's own fields.
LOGS_MAPPINGS = {
    "dynamic": True,
    "properties": {
        "@timestamp": {"type": "date"},
        "message": {"type": "text"}, "text": {"type": "text"},
        "service": _kw(), "environment": _kw(), "tags": _kw(),
        "host": {"properties": {"name": _kw()}},
        "log": {"properties": {"file": {"properties": {"path": _kw()}}}},
        "record": {"properties": {
            "message": {"type": "text"},
            "level": {"properties": {"name": _kw(), "no": {"type": "integer"},
                                     "icon": _kw()}},
            "name": _kw(), "module": _kw(), "function": _kw(), "line": {"type": "integer"},
            "file": {"properties": {"name": _kw(), "path": _kw()}},
            "process": {"properties": {"id": {"type": "long"}, "name": _kw()}},
            "thread": {"properties": {"id": {"type": "long"}, "name": _kw()}},
            "time": {"properties": {"repr": _kw(), "timestamp": {"type": "double"}}},
            "extra": {"properties": {"worker_id": _kw(), "project_id": _kw(),
                                     "component": _kw()}},
            # Free-form: kept in _source, never mapped (a traceback's shape varies).
            "exception": {"type": "object", "enabled": False},
            "elapsed": {"type": "object", "enabled": False},
        }},
        # The daily spend report's events (autocode/spend_report.py): USD to the micro-dollar.
        "spend": {"properties": {
            "id": _kw(), "kind": _kw(), "day": {"type": "date"}, "timezone": _kw(),
            "worker": _kw(), "agent": _kw(), "model": _kw(), "flagged": {"type": "boolean"},
            **{f"{name}_usd": {"type": "scaled_float", "scaling_factor": 1_000_000}
               for name in ("metered", "agent_reported", "difference")},
            **{name: {"type": "long"} for name in (
                "requests", "input_tokens", "output_tokens", "cache_read_tokens",
                "cache_write_tokens", "estimated", "unknown_model")},
        }},
    },
}


def index_objects(data, prefix: str = "autocode") -> list[Managed]:
    """Everything the platform needs in Elasticsearch, in the order it is written (`prefix`
    renames them all, for tests against a shared cluster)."""
    streams = {k: v.replace("autocode", prefix, 1) for k, v in STREAMS.items()}
    repo_name = SNAPSHOT_REPOSITORY.replace("autocode", prefix, 1)
    size = data["elasticsearch_rollover_size"]
    days = {"logs": data["log_retention_days"], "traffic": data["traffic_retention_days"]}
    mappings = {"logs": LOGS_MAPPINGS, "traffic": TRAFFIC_MAPPINGS}
    objects = [Managed("ilm_policy", streams[k], _lifecycle(days[k], size)) for k in streams]
    for key, stream in streams.items():
        index_settings: dict = {"lifecycle": {"name": stream}}
        if data["elasticsearch_mode"] == "local":
            index_settings["number_of_replicas"] = "0"  # one node: no replica could live
        objects.append(Managed("index_template", stream, {
            "index_patterns": [f"{stream}*"],
            "data_stream": {},
            "priority": 500,
            "_meta": {"managed_by": "autocode"},
            "template": {"settings": {"index": index_settings}, "mappings": mappings[key]},
        }))
    objects += [Managed("data_stream", stream, None) for stream in streams.values()]
    repo = data.get("elasticsearch_snapshot_repository") or {
        "type": "fs", "settings": {"location": snapshot_dir(data)}}
    objects.append(Managed("snapshot_repository", repo_name, repo))
    keep = data["elasticsearch_snapshot_keep"]
    objects.append(Managed("slm_policy", SLM_POLICY.replace("autocode", prefix, 1), {
        "name": f"<{prefix}-snapshot-{{now/d}}>",
        "schedule": data["elasticsearch_snapshot_schedule"],
        "repository": repo_name,
        "config": {"indices": list(streams.values()), "include_global_state": False},
        "retention": {"expire_after": f"{keep}d", "min_count": 1, "max_count": keep},
    }))
    return objects


def client(data) -> dict:
    """How the orchestrator's own clients (the traffic shipper, Filebeat) reach the cluster:
    url, and the on-host paths of the API key and CA files when there are any."""
    if data.get("elasticsearch_mode") == "external":
        return {"url": data["elasticsearch_url"].rstrip("/"),
                "api_key_file": API_KEY_FILE if credentials(data).in_force else None,
                "ca_certs": CA_FILE if data.get("elasticsearch_ca_file") else None}
    return {"url": f"http://127.0.0.1:{data['elasticsearch_port']}", "api_key_file": None,
            "ca_certs": None}


def client_inputs(data) -> dict[str, str]:
    """Digests of the key and CA files the clients read at start: a service reading them
    is restarted when either changes (a rotated key, a renewed CA)."""
    inputs = {}
    if data.get("elasticsearch_mode") == "external":
        key = credentials(data).in_force
        if key:
            inputs["elasticsearch API key"] = digest(key)
        if data.get("elasticsearch_ca_file"):
            inputs["elasticsearch CA"] = digest(
                Path(data["elasticsearch_ca_file"]).expanduser().read_text())
    return inputs


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


def credentials(data) -> Credentials:
    """From elasticsearch_credentials_file, or from elasticsearch_credentials_vault_path
    (needs the deploy's run: the Vault session and the orchestrator's key file)."""
    if data.get("elasticsearch_credentials_file"):
        key = api_key_from_file(
            Path(data["elasticsearch_credentials_file"]).expanduser().read_text())
        return Credentials(write=key, in_force=key)
    if not data.get("elasticsearch_credentials_vault_path"):
        return Credentials()
    from tasks import vault

    state = host.state
    return per_stage(state, "elasticsearch_credentials", lambda: from_vault(
        data, lambda: vault.deploy_session(state), inventory.get_group("orchestrator")[0]))


def from_vault(data, session_of_run, orchestrator) -> Credentials:
    """The key elasticsearch_credentials_vault_path names: from vault_seed_file when the
    seed writes that secret in this apply, else read from Vault with the deploy's token
    (session_of_run() gives the run's infra.vault.Session), else the key the orchestrator
    (a pyinfra host) already has."""
    from infra.vault import KV_MOUNT, VaultSetupError
    from infra.vault_api import VaultAPIError

    path = data["elasticsearch_credentials_vault_path"]
    where = f"{KV_MOUNT}/{path}"
    seeded = _seeded_secret(data)
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


def api_key(data) -> str | None:
    return credentials(data).in_force


def filebeat_api_key(data) -> str | None:
    """Filebeat's output takes the key as `id:api_key`, the decoded form."""
    key = api_key(data)
    return base64.b64decode(key).decode() if key else None


def _api(data) -> ElasticsearchAPI:
    """The deploy's client: to the external cluster, or through the SSH connection to the
    orchestrator's own node on its loopback."""
    cache = host.state.__dict__.setdefault("_autocode_elasticsearch", {})
    if "api" in cache:
        return cache["api"]
    if data.elasticsearch_mode == "external":
        ca = data.get("elasticsearch_ca_file")
        api = ElasticsearchAPI(data.elasticsearch_url.rstrip("/"), api_key=api_key(data.dict()),
                               ca_pem=Path(ca).expanduser().read_text() if ca else None)
    else:
        orch = inventory.get_group("orchestrator")[0]
        ssh_client = getattr(orch.connector, "client", None)
        tunnel = (lambda: orch.connector.client.get_transport()) if ssh_client else None
        api = ElasticsearchAPI(f"http://127.0.0.1:{data.elasticsearch_port}", tunnel=tunnel)
    cache["api"] = api
    return api


# -- deploy ---------------------------------------------------------------------------------


def _local_node(data):
    """The node on this host; returns its unit's operation."""
    sources = elastic_repository(data)
    package = apt.packages(name=f"Elasticsearch {data.elasticsearch_version}",
                           packages=[f"elasticsearch={data.elasticsearch_version}"],
                           update=sources.changed, cache_time=data.apt_cache_seconds)
    sysctls(name="Kernel settings for Elasticsearch", values={"vm.max_map_count": MAX_MAP_COUNT},
            persist_file="/etc/sysctl.d/60-autocode-elasticsearch.conf")
    d = data.dict()
    # Owned by the account the package creates, so not in the data tree base makes.
    for path in (data_dir(d), logs_dir(d), snapshot_dir(d)):
        directory(name=f"Folder {path}", path=path, user=ES_USER, group=ES_USER, mode="750")
    config = render_node_config(d)
    heap = render("elasticsearch/heap.options.j2",
                  heap_mb=heap_mb(d, host.get_fact(MemoryMB)))
    drop_in = render("elasticsearch/limits.conf.j2")
    batch = (ES_CONFIG, HEAP_OPTIONS, DROP_IN)
    config_op = file_content(name="elasticsearch.yml", path=ES_CONFIG, text=config,
                             user="root", group=ES_USER, mode="640", batch=batch)
    heap_op = file_content(name="Elasticsearch JVM heap", path=HEAP_OPTIONS, text=heap,
                           user="root", group=ES_USER, mode="640", batch=batch)
    directory(name=f"Folder {DROP_IN_DIR}", path=DROP_IN_DIR, user="root", group="root",
              mode="755")
    drop_in_op = file_content(name="Elasticsearch unit limits", path=DROP_IN, text=drop_in,
                              batch=batch)
    server.shell(name="systemd reloaded for Elasticsearch's limits",
                 commands=["systemctl daemon-reload"], _if=drop_in_op.did_change)
    return systemd_unit(
        name=f"Unit {UNIT}", unit=UNIT,
        inputs={"elasticsearch.yml": digest(config), "heap": digest(heap),
                "limits": digest(drop_in), "version": data.elasticsearch_version},
        restart_when=(config_op, heap_op, drop_in_op, package))


def _client_files(data) -> None:
    """The API key and CA for the orchestrator's own clients of an external cluster."""
    from tasks.mitmproxy import PROXY_USER
    d = data.dict()
    if not (d.get("elasticsearch_credentials_file") or d.get("elasticsearch_credentials_vault_path")
            or d.get("elasticsearch_ca_file")):
        return
    directory(name=f"Folder {CLIENT_DIR}", path=CLIENT_DIR, user="root", group=PROXY_USER,
              mode="750")
    key = credentials(d)
    if key.write:
        file_content(name="Elasticsearch API key for the orchestrator's clients",
                     path=API_KEY_FILE, text=key.write + "\n", user="root",
                     group=PROXY_USER, mode="640")
    if d.get("elasticsearch_ca_file"):
        file_content(name="Elasticsearch cluster's CA", path=CA_FILE,
                     text=Path(d["elasticsearch_ca_file"]).expanduser().read_text(),
                     user="root", group=PROXY_USER, mode="644")


@deploy("Elasticsearch")
def orchestrator() -> None:
    data = host.data
    if data.elasticsearch_mode == "none":
        return
    if data.elasticsearch_mode == "local":
        _local_node(data)
    else:
        _client_files(data)
        key = credentials(data.dict())
        if key.waiting and not key.in_force:
            host.noop(f"Elasticsearch: index management waits for the API key ({key.waiting})")
            return
    es_objects(name="Elasticsearch: lifecycle policies, index templates, data streams, "
                    "snapshots", api=_api(data), objects=tuple(index_objects(data.dict())))


def worker() -> None:
    return None
