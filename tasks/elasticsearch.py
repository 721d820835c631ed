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

import yaml
from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.operations import apt, server

from infra.apt_repository import apt_repository
from infra.component import Component
from infra.components import Catalogue
from infra.elasticsearch import ElasticsearchAPI, Managed
from infra.elasticsearch import elasticsearch_objects as es_objects
from infra.facts import MemoryMB
from infra.operations import digest, directory, file_content, sysctls, systemd_unit
from infra.render import render
from infra.settings import HostSettings
from settings.base import Base
from settings.elasticsearch import (
    API_KEY_FILE,
    CA_FILE,
    CLIENT_DIR,
    MAX_HEAP_MB,
    STREAMS,
    Credentials,
    Elasticsearch,
    credentials,
    repository,
)
from settings.mitmproxy import PROXY_USER

ES_USER = "elasticsearch"
UNIT = "elasticsearch.service"
ES_CONFIG = "/etc/elasticsearch/elasticsearch.yml"
HEAP_OPTIONS = "/etc/elasticsearch/jvm.options.d/autocode-heap.options"
DROP_IN_DIR = "/etc/systemd/system/elasticsearch.service.d"
DROP_IN = f"{DROP_IN_DIR}/autocode.conf"
MAX_MAP_COUNT = 262144
SNAPSHOT_REPOSITORY = "autocode-backups"
SLM_POLICY = "autocode-daily-snapshots"

COMPONENT = Component(
    name="elasticsearch",
    settings=Elasticsearch,
    private_ports=lambda es: es.private_ports(),
)


# -- configuration, built as data (the unit tests parse these) --------------------------------


def data_dir(data_root: str) -> str:
    return f"{data_root}/elasticsearch"


def logs_dir(data_root: str) -> str:
    return f"{data_root}/logs/orchestrator/elasticsearch"


def snapshot_dir(data_root: str) -> str:
    return f"{data_root}/backups/elasticsearch"


def node_settings(settings: HostSettings) -> dict:
    """elasticsearch.yml, as the seed's "Elasticsearch Configuration" has it."""
    es, data_root = settings[Elasticsearch], settings[Base].data_root
    return {
        "cluster.name": "autocode-cluster",
        "node.name": "autocode-node-1",
        "path.data": data_dir(data_root),
        "path.logs": logs_dir(data_root),
        "path.repo": [snapshot_dir(data_root)],
        "network.host": "0.0.0.0",
        "http.port": es.elasticsearch_port,
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


def render_node_config(settings: HostSettings) -> str:
    return render("elasticsearch/elasticsearch.yml.j2",
                  body=yaml.safe_dump(node_settings(settings), sort_keys=False))


def heap_mb(settings: HostSettings, memory_mb: int | None) -> int:
    es = settings[Elasticsearch]
    if es.elasticsearch_heap_mb:
        return int(es.elasticsearch_heap_mb)
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


def index_objects(settings: HostSettings, prefix: str = "autocode") -> list[Managed]:
    """Everything the platform needs in Elasticsearch, in the order it is written (`prefix`
    renames them all, for tests against a shared cluster)."""
    es, data_root = settings[Elasticsearch], settings[Base].data_root
    streams = {k: v.replace("autocode", prefix, 1) for k, v in STREAMS.items()}
    repo_name = SNAPSHOT_REPOSITORY.replace("autocode", prefix, 1)
    size = es.elasticsearch_rollover_size
    days = {"logs": es.log_retention_days, "traffic": es.traffic_retention_days}
    mappings = {"logs": LOGS_MAPPINGS, "traffic": TRAFFIC_MAPPINGS}
    objects = [Managed("ilm_policy", streams[k], _lifecycle(days[k], size)) for k in streams]
    for key, stream in streams.items():
        index_settings: dict = {"lifecycle": {"name": stream}}
        if es.elasticsearch_mode == "local":
            index_settings["number_of_replicas"] = "0"  # one node: no replica could live
        objects.append(Managed("index_template", stream, {
            "index_patterns": [f"{stream}*"],
            "data_stream": {},
            "priority": 500,
            "_meta": {"managed_by": "autocode"},
            "template": {"settings": {"index": index_settings}, "mappings": mappings[key]},
        }))
    objects += [Managed("data_stream", stream, None) for stream in streams.values()]
    repo = es.elasticsearch_snapshot_repository or {
        "type": "fs", "settings": {"location": snapshot_dir(data_root)}}
    objects.append(Managed("snapshot_repository", repo_name, repo))
    keep = es.elasticsearch_snapshot_keep
    objects.append(Managed("slm_policy", SLM_POLICY.replace("autocode", prefix, 1), {
        "name": f"<{prefix}-snapshot-{{now/d}}>",
        "schedule": es.elasticsearch_snapshot_schedule,
        "repository": repo_name,
        "config": {"indices": list(streams.values()), "include_global_state": False},
        "retention": {"expire_after": f"{keep}d", "min_count": 1, "max_count": keep},
    }))
    return objects


def _api(es: Elasticsearch, key: Credentials) -> ElasticsearchAPI:
    """The deploy's client: to the external cluster, or through the SSH connection to the
    orchestrator's own node on its loopback."""
    cache = host.state.__dict__.setdefault("_autocode_elasticsearch", {})
    if "api" in cache:
        return cache["api"]
    if es.elasticsearch_mode == "external":
        api = ElasticsearchAPI(es.elasticsearch_url.rstrip("/"), api_key=key.in_force,
                               ca_pem=es.ca_text())
    else:
        orch = inventory.get_group("orchestrator")[0]
        ssh_client = getattr(orch.connector, "client", None)
        tunnel = (lambda: orch.connector.client.get_transport()) if ssh_client else None
        api = ElasticsearchAPI(f"http://127.0.0.1:{es.elasticsearch_port}", tunnel=tunnel)
    cache["api"] = api
    return api


# -- deploy ---------------------------------------------------------------------------------


def _local_node(settings: HostSettings):
    """The node on this host; returns its unit's operation."""
    es, base = settings[Elasticsearch], settings[Base]
    # Elastic's repository (one sources file, whichever of this and Filebeat asks first).
    sources = apt_repository(repository(es.elasticsearch_version),
                             es.elastic_apt_key_fingerprint)
    package = apt.packages(name=f"Elasticsearch {es.elasticsearch_version}",
                           packages=[f"elasticsearch={es.elasticsearch_version}"],
                           update=sources.changed, cache_time=base.apt_cache_seconds)
    sysctls(name="Kernel settings for Elasticsearch", values={"vm.max_map_count": MAX_MAP_COUNT},
            persist_file="/etc/sysctl.d/60-autocode-elasticsearch.conf")
    root = base.data_root
    # Owned by the account the package creates, so not in the data tree base makes.
    for path in (data_dir(root), logs_dir(root), snapshot_dir(root)):
        directory(name=f"Folder {path}", path=path, user=ES_USER, group=ES_USER, mode="750")
    config = render_node_config(settings)
    heap = render("elasticsearch/heap.options.j2",
                  heap_mb=heap_mb(settings, host.get_fact(MemoryMB)))
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
                "limits": digest(drop_in), "version": es.elasticsearch_version},
        restart_when=(config_op, heap_op, drop_in_op, package))


def _client_files(es: Elasticsearch, key: Credentials) -> None:
    """The API key and CA for the orchestrator's own clients of an external cluster."""
    if not (es.elasticsearch_credentials_file or es.elasticsearch_credentials_vault_path
            or es.elasticsearch_ca_file):
        return
    directory(name=f"Folder {CLIENT_DIR}", path=CLIENT_DIR, user="root", group=PROXY_USER,
              mode="750")
    if key.write:
        file_content(name="Elasticsearch API key for the orchestrator's clients",
                     path=API_KEY_FILE, text=key.write + "\n", user="root",
                     group=PROXY_USER, mode="640")
    if es.elasticsearch_ca_file:
        file_content(name="Elasticsearch cluster's CA", path=CA_FILE, text=es.ca_text(),
                     user="root", group=PROXY_USER, mode="644")


@deploy("Elasticsearch")
def orchestrator(catalogue: Catalogue) -> None:
    settings = HostSettings.of(host)
    es = settings[Elasticsearch]
    if es.elasticsearch_mode == "none":
        return
    key = credentials(settings, host.state, inventory.get_group("orchestrator")[0])
    if es.elasticsearch_mode == "local":
        _local_node(settings)
    else:
        _client_files(es, key)
        if key.waiting and not key.in_force:
            host.noop(f"Elasticsearch: index management waits for the API key ({key.waiting})")
            return
    es_objects(name="Elasticsearch: lifecycle policies, index templates, data streams, "
                    "snapshots", api=_api(es, key),
               objects=tuple(index_objects(settings)))
