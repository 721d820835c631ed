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

import re

import yaml
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt

from infra.component import Component
from infra.operations import digest, file_content, systemd_unit
from infra.render import render
from infra.validation import Problems, check_bool
from tasks import elasticsearch

UNIT = "filebeat.service"
CONFIG = "/etc/filebeat/filebeat.yml"
CHECK = f"filebeat test config -c {CONFIG} --path.config /etc/filebeat"
INDEX = elasticsearch.STREAMS["logs"]
FORWARDED = "forwarded"


def check(problems: Problems, role: str, data) -> None:
    check_bool(problems, "filebeat_enabled", data.get("filebeat_enabled"))
    version = data.get("filebeat_version")
    if not (isinstance(version, str) and re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", version)):
        problems.add("filebeat_version", f"{version!r} is not a version; pin one that "
                     "Elastic's apt repository has, e.g. 8.19.0")
    env = data.get("log_environment")
    if not (isinstance(env, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", env)):
        problems.add("log_environment", f"{env!r}: give a short name for this site's logs, "
                     "e.g. production")


COMPONENT = Component(
    name="filebeat",
    settings={
        "filebeat_enabled": True,
        "filebeat_version": "8.19.0",
        # The `environment` field of every log event.
        "log_environment": "production",
    },
    check=check,
)


def enabled(data) -> bool:
    return bool(data.get("filebeat_enabled")) and data.get("elasticsearch_mode") != "none"


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


def settings(data, api_key: str | None = None) -> dict:
    """filebeat.yml as data, as the seed's "Filebeat Configuration" has it."""
    root, env = data["data_root"], data["log_environment"]
    target = elasticsearch.client(data)
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


def render_config(data, api_key: str | None = None) -> str:
    return render("filebeat/filebeat.yml.j2",
                  body=yaml.safe_dump(settings(data, api_key), sort_keys=False))


@deploy("Filebeat")
def orchestrator() -> None:
    data = host.data
    if not enabled(data):
        return
    sources = elasticsearch.elastic_repository(data)
    package = apt.packages(name=f"Filebeat {data.filebeat_version}",
                           packages=[f"filebeat={data.filebeat_version}"],
                           update=sources.changed, cache_time=data.apt_cache_seconds)
    d = data.dict()
    key = elasticsearch.filebeat_api_key(d) if d.get("elasticsearch_mode") == "external" \
        else None
    config = render_config(d, key)
    # 0600: it may hold the cluster's API key.
    config_op = file_content(name="filebeat.yml", path=CONFIG, text=config, user="root",
                             group="root", mode="600")
    systemd_unit(name=f"Unit {UNIT}", unit=UNIT,
                 inputs={"filebeat.yml": digest(config), "version": data.filebeat_version,
                         **elasticsearch.client_inputs(d)},
                 restart_when=(config_op, package), check_command=CHECK)


def worker() -> None:
    return None
