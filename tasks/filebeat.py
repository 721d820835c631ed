"""Filebeat on the orchestrator: the platform's log files to the `autocode-logs` data stream.

- From Elastic's apt repository (shared with Elasticsearch: one keyring, one sources file),
  the version pinned.
- filebeat.yml is built as data and written as YAML: one filestream input (with its own
  unique id, which filestream needs to keep its read state apart) per folder —
  `logs/orchestrator` (the orchestrator's own services), `logs/workers/<worker>/worker.log`
  (what the workers forwarded, tagged `forwarded`, the worker's name taken from the
  folder), `logs/traffic/dns` (the DNS query log), `financial/reports/spend-*.ndjson`
  (the daily spend report's figures, one event per line) — with the ndjson parser for the
  JSON lines, `service` and `environment` fields, `add_host_metadata` except on forwarded
  events (whose host is the worker, not this one), and compressed output.
- One data stream rolled over daily by ILM rather than the seed's daily index name
  (`autocode-logs-%{+yyyy.MM.dd}`): with Filebeat 8 that pattern makes a new data stream
  each day, each with its own template match, lifecycle and backing index; one stream gives
  the same daily indices and the same retention, and a single name to query.
- `filebeat test config` passes before any restart.
"""

from __future__ import annotations

import yaml
from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.operations import apt

from infra.apt_repository import apt_repository
from infra.component import Component
from infra.components import Catalogue
from infra.operations import digest, file_content, systemd_unit
from infra.render import render
from infra.settings import HostSettings
from settings.base import Base
from settings.elasticsearch import (
    STREAMS,
    Elasticsearch,
    client_inputs,
    credentials,
    repository,
)
from settings.filebeat import Filebeat

UNIT = "filebeat.service"
CONFIG = "/etc/filebeat/filebeat.yml"
CHECK = f"filebeat test config -c {CONFIG} --path.config /etc/filebeat"
INDEX = STREAMS["logs"]
FORWARDED = "forwarded"

COMPONENT = Component(name="filebeat", settings=Filebeat)


def enabled(settings: HostSettings) -> bool:
    return (settings[Filebeat].filebeat_enabled
            and settings[Elasticsearch].elasticsearch_mode != "none")


def _input(input_id: str, paths: list[str], service: str, environment: str,
           ndjson: bool = True, tags: list[str] | None = None, overwrite_keys: bool = False,
           **extra) -> dict:
    item: dict = {"type": "filestream", "id": input_id, "paths": paths,
                  "fields": {"service": service, "environment": environment},
                  "fields_under_root": True}
    if tags:
        item["tags"] = tags
    if ndjson:
        # loguru's serialize=True lines: `text` and `record` at the event's root; a line
        # that is not JSON is kept, with error.message saying so.
        parser = {"target": "", "add_error_key": True}
        if overwrite_keys:
            parser["overwrite_keys"] = True  # the event's own @timestamp, not the read time
        item["parsers"] = [{"ndjson": parser}]
    item.update(extra)
    return item


def config(settings: HostSettings, api_key: str | None = None) -> dict:
    """filebeat.yml as data, as the seed's "Filebeat Configuration" has it; `api_key`: the
    cluster's key in force, decoded (Filebeat takes `id:api_key`)."""
    root, env = settings[Base].data_root, settings[Filebeat].log_environment
    target = settings[Elasticsearch].client(api_key)
    workers_dir = f"{root}/logs/workers"
    inputs = [
        _input("autocode-orchestrator", [f"{root}/logs/orchestrator/**/*.log",
                                         f"{root}/logs/orchestrator/*.log"],
               "orchestrator", env,
               # Elasticsearch's own logs stay out of Elasticsearch.
               **{"prospector.scanner.exclude_files": [r"/logs/orchestrator/elasticsearch/"]}),
        _input("autocode-workers", [f"{workers_dir}/*/worker.log"], "worker", env,
               tags=[FORWARDED],
               processors=[{"dissect": {
                   "tokenizer": f"{workers_dir}/%{{worker}}/worker.log",
                   "field": "log.file.path", "target_prefix": FORWARDED}}]),
        _input("autocode-dns", [f"{root}/logs/traffic/dns/*.log"], "dns", env, ndjson=False),
        # The daily spend report (autocode-budget, tasks/metering.py) as events. Each file
        # is replaced whole when written again: its events' own ids (`spend.id`, a digest)
        # become the document ids, so reading it again stores nothing twice.
        _input("autocode-spend-reports", [f"{root}/financial/reports/spend-*.ndjson"],
               "spend-report", env, overwrite_keys=True,
               processors=[{"fingerprint": {"fields": ["spend.id"],
                                            "target_field": "@metadata._id"}}]),
    ]
    output: dict = {"hosts": [target["url"]], "index": INDEX, "compression_level": 1}
    if api_key:
        output["api_key"] = api_key
    if target.get("ca_certs"):
        output["ssl.certificate_authorities"] = [target["ca_certs"]]
    return {
        "filebeat.inputs": inputs,
        "processors": [
            # Forwarded events happened on a worker: this host's metadata would mislead.
            {"add_host_metadata": {"when": {"not": {"contains": {"tags": FORWARDED}}}}},
        ],
        "output.elasticsearch": output,
        # The template, lifecycle and data stream are the elasticsearch component's.
        "setup.template.enabled": False,
        "setup.template.name": INDEX,
        "setup.template.pattern": f"{INDEX}*",
        "setup.ilm.enabled": False,
    }


def render_config(settings: HostSettings, api_key: str | None = None) -> str:
    return render("filebeat/filebeat.yml.j2",
                  body=yaml.safe_dump(config(settings, api_key), sort_keys=False))


@deploy("Filebeat")
def orchestrator(catalogue: Catalogue) -> None:
    settings = HostSettings.of(host)
    if not enabled(settings):
        return
    beat, es, base = settings[Filebeat], settings[Elasticsearch], settings[Base]
    # Elastic's repository (one sources file, whichever of this and Elasticsearch asks).
    sources = apt_repository(repository(es.elasticsearch_version),
                             es.elastic_apt_key_fingerprint)
    package = apt.packages(name=f"Filebeat {beat.filebeat_version}",
                           packages=[f"filebeat={beat.filebeat_version}"],
                           update=sources.changed, cache_time=base.apt_cache_seconds)
    key = credentials(settings, host.state, inventory.get_group("orchestrator")[0])
    text = render_config(settings, key.filebeat_key())
    # 0600: it may hold the cluster's API key.
    config_op = file_content(name="filebeat.yml", path=CONFIG, text=text, user="root",
                             group="root", mode="600")
    systemd_unit(name=f"Unit {UNIT}", unit=UNIT,
                 inputs={"filebeat.yml": digest(text), "version": beat.filebeat_version,
                         **client_inputs(es, key)},
                 restart_when=(config_op, package), check_command=CHECK)
