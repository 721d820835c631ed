"""Load and validate the traffic logger's YAML config (schema: see the package docstring).

Every problem is reported at once, each naming the field and how to fix it; none echoes a
secret value. `dump_config` is the one way the deploy writes this file.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autocode.problems import Problem, Problems, in_range, is_number, is_whole
from autocode.traffic.cache import CacheConfig, parse_cache
from autocode.traffic.metering import MeteringConfig, parse_metering

DEFAULT_INDEX = "autocode-traffic"


class TrafficConfigError(ValueError):
    """The traffic config is missing, unreadable or invalid; `problems` lists each."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems or [message])


@dataclass(frozen=True)
class ElasticsearchConfig:
    url: str = "http://127.0.0.1:9200"
    index: str = DEFAULT_INDEX
    ca_certs: str | None = None
    api_key_file: str | None = None
    batch_size: int = 500
    batch_max_bytes: int = 5 * 1024 * 1024
    request_timeout: float = 30.0
    poll_interval: float = 0.5
    retry_initial: float = 0.5
    retry_max: float = 30.0
    # gzip the bulk bodies; None: only when Elasticsearch is not on this host (compressing
    # for loopback costs the orchestrator CPU and saves nothing).
    compress: bool | None = None


@dataclass(frozen=True)
class TrafficConfig:
    spool_dir: Path
    workers: dict[str, str] = field(default_factory=dict)
    redact_headers: tuple[str, ...] = ()
    redact_patterns: tuple[str, ...] = ()
    redact_value_patterns: tuple[str, ...] = ()
    fail_closed: bool = True
    # What the proxy does with a connection that is not HTTP (raw TCP, TLS around another
    # protocol, WebSocket and other upgrades): "block" refuses it, "allow" relays it.
    # Either way it gets a record.
    non_http: str = "block"
    queue_size: int = 10_000
    writer_batch_max: int = 1000
    writer_retry_seconds: float = 1.0
    writer_linger_seconds: float = 0.05
    segment_max_bytes: int = 64 * 1024 * 1024
    min_free_bytes: int = 16 * 1024 * 1024
    keep_shipped_segments: bool = False
    # Retention (the shipper's sweep): shipped copies older than this many days are
    # deleted, and sooner, oldest first, when the spool's disk runs short; archived
    # dead-letter files older than dead_letter_keep_days too. None: kept.
    shipped_keep_days: float | None = None
    dead_letter_keep_days: float | None = None
    elasticsearch: ElasticsearchConfig = field(default_factory=ElasticsearchConfig)
    # Spend metering of LLM API calls (autocode/traffic/metering.py); None: off.
    metering: MeteringConfig | None = None
    # The cache of content-addressed package artifacts (autocode/traffic/cache.py).
    package_cache: CacheConfig | None = None
    # autocode-control's running-tasks.json (autocode/control/running.py): each worker's
    # task, put on its records and ledger rows, and its budget held at the proxy. None: off.
    running_tasks: Path | None = None

    @property
    def checkpoint_path(self) -> Path:
        return self.spool_dir / "checkpoint.json"

    @property
    def dead_letter_path(self) -> Path:
        return self.spool_dir / "dead-letter.jsonl"

    @property
    def shipped_dir(self) -> Path:
        return self.spool_dir / "shipped"


def _render(problem: Problem) -> str:
    return f"traffic config field '{problem.field}' {problem.problem}; fix: {problem.fix}"


def _positive_int(p: Problems, data: dict, key: str, default: int, prefix: str = "",
                  minimum: int = 1) -> int:
    value = data.get(key, default)
    if not (is_whole(value) and in_range(value, minimum, None)):
        p.add(prefix + key, f"must be an integer >= {minimum}, got {value!r}",
              f"set it to an integer such as {default}")
        return default
    return value


def _number(p: Problems, data: dict, key: str, default: float, prefix: str = "",
            zero_ok: bool = False) -> float:
    value = data.get(key, default)
    if not (is_number(value) and in_range(value, 0, None, exclusive_minimum=not zero_ok)):
        p.add(prefix + key, f"must be a number {'>=' if zero_ok else '>'} 0, got {value!r}",
              f"set it to a number of seconds such as {default}")
        return float(default)
    return float(value)


def _days(p: Problems, data: dict, key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if not (is_number(value) and value > 0):
        p.add(key, f"must be a number of days > 0, got {value!r}",
              "write e.g. 7, or leave it out to keep them")
        return None
    return float(value)


def _bool(p: Problems, data: dict, key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        p.add(key, f"must be true or false, got {value!r}", "write true or false unquoted")
        return default
    return value


NON_HTTP_POLICIES = ("block", "allow")


def _choice(p: Problems, data: dict, key: str, choices: tuple[str, ...], default: str
            ) -> str:
    value = data.get(key, default)
    if value not in choices:
        p.add(key, f"must be one of {', '.join(choices)}, got {value!r}",
              f"write e.g. {key}: {default}")
        return default
    return value


def _string_list(p: Problems, data: dict, key: str, check_regex: bool = False
                 ) -> tuple[str, ...]:
    value = data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        p.add(key, "must be a list of non-empty strings", f"write e.g. {key}: [\"x-foo\"]")
        return ()
    if check_regex:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                p.add(key, f"has an invalid regular expression {pattern!r} ({exc})",
                      "correct or quote the pattern (Python re syntax)")
    return tuple(value)


def _reject_unknown(p: Problems, data: dict, known: set[str], prefix: str = "") -> None:
    for name in sorted(set(data) - known, key=str):
        p.add(prefix + str(name), "is not a known field",
              f"remove it or use one of: {', '.join(sorted(known))}")


def _workers(p: Problems, data: dict) -> dict[str, str]:
    raw = data.get("workers") or {}
    if not isinstance(raw, dict):
        p.add("workers", "must be a mapping of client IP to worker id",
              "write e.g. workers: {\"10.20.0.11\": w1}")
        return {}
    workers: dict[str, str] = {}
    for ip, worker_id in raw.items():
        try:
            normal_ip = str(ipaddress.ip_address(str(ip)))
        except ValueError:
            p.add(f"workers.{ip}", "is not an IP address",
                  "use the worker's IPv4/IPv6 address as the key")
            continue
        # A worker id is a name: YAML's `no`, `on` or 1.0 unquoted are not one.
        if not isinstance(worker_id, str) or worker_id == "":
            p.add(f"workers.{ip}", f"must map to a worker id string, got {worker_id!r}",
                  "write e.g. \"10.20.0.11\": w1, quoting ids YAML reads as other types")
            continue
        workers[normal_ip] = worker_id
    return workers


def _elasticsearch(p: Problems, data: dict) -> ElasticsearchConfig:
    raw = data.get("elasticsearch") or {}
    defaults = ElasticsearchConfig()
    if not isinstance(raw, dict):
        p.add("elasticsearch", "must be a mapping", "write e.g. elasticsearch: {url: ...}")
        return defaults
    _reject_unknown(p, raw, set(ElasticsearchConfig.__dataclass_fields__), "elasticsearch.")
    url = raw.get("url", defaults.url)
    if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
        p.add("elasticsearch.url", f"must be an http(s) URL, got {url!r}",
              "write e.g. https://127.0.0.1:9200")
        url = defaults.url
    index = raw.get("index", defaults.index)
    if not isinstance(index, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", index):
        p.add("elasticsearch.index", f"must be a lowercase index/data stream name, got "
              f"{index!r}", f"use e.g. {DEFAULT_INDEX}")
        index = defaults.index
    paths = {}
    for key in ("ca_certs", "api_key_file"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value.startswith("/")):
            p.add(f"elasticsearch.{key}", f"must be an absolute file path, got {value!r}",
                  "write an absolute path such as /etc/autocode/...")
            value = None
        paths[key] = value
    pre = "elasticsearch."
    return ElasticsearchConfig(
        url=url.rstrip("/"),
        index=index,
        ca_certs=paths["ca_certs"],
        api_key_file=paths["api_key_file"],
        batch_size=_positive_int(p, raw, "batch_size", defaults.batch_size, pre),
        batch_max_bytes=_positive_int(p, raw, "batch_max_bytes", defaults.batch_max_bytes, pre),
        request_timeout=_number(p, raw, "request_timeout", defaults.request_timeout, pre),
        poll_interval=_number(p, raw, "poll_interval", defaults.poll_interval, pre),
        retry_initial=_number(p, raw, "retry_initial", defaults.retry_initial, pre),
        retry_max=_number(p, raw, "retry_max", defaults.retry_max, pre),
        compress=None if raw.get("compress") is None else _bool(p, raw, "compress", True),
    )


def _running_tasks(p: Problems, value: Any) -> Path | None:
    if value is None:
        return None
    if not (isinstance(value, str) and value.startswith("/")):
        p.add("running_tasks", f"must be an absolute file path, got {value!r}",
              "e.g. /mnt/data/autocode/control/running-tasks.json, or leave it out")
        return None
    return Path(value)


def parse_config(data: Any) -> TrafficConfig:
    """Validate an already-parsed YAML document. Raises TrafficConfigError naming every
    problem at once (one per line), each with its field and fix."""
    if not isinstance(data, dict):
        raise TrafficConfigError(
            "traffic config must be a YAML mapping; fix: start from the example in "
            "autocode.traffic's docstring"
        )
    p = Problems()
    _reject_unknown(p, data, set(TrafficConfig.__dataclass_fields__))
    spool_dir = data.get("spool_dir")
    if not isinstance(spool_dir, str) or not spool_dir.startswith("/"):
        p.add("spool_dir", f"must be an absolute directory path, got {spool_dir!r}",
              "set it to e.g. /mnt/data/autocode/logs/traffic")
        spool_dir = "/"
    defaults = TrafficConfig(spool_dir=Path("/"))
    config = TrafficConfig(
        spool_dir=Path(spool_dir),
        workers=_workers(p, data),
        redact_headers=tuple(h.lower() for h in _string_list(p, data, "redact_headers")),
        redact_patterns=_string_list(p, data, "redact_patterns", check_regex=True),
        redact_value_patterns=_string_list(p, data, "redact_value_patterns", check_regex=True),
        fail_closed=_bool(p, data, "fail_closed", True),
        non_http=_choice(p, data, "non_http", NON_HTTP_POLICIES, "block"),
        queue_size=_positive_int(p, data, "queue_size", defaults.queue_size),
        writer_batch_max=_positive_int(p, data, "writer_batch_max", defaults.writer_batch_max),
        writer_retry_seconds=_number(p, data, "writer_retry_seconds",
                                     defaults.writer_retry_seconds),
        writer_linger_seconds=_number(p, data, "writer_linger_seconds",
                                      defaults.writer_linger_seconds, zero_ok=True),
        segment_max_bytes=_positive_int(p, data, "segment_max_bytes",
                                        defaults.segment_max_bytes, minimum=1024),
        min_free_bytes=_positive_int(p, data, "min_free_bytes", defaults.min_free_bytes,
                                     minimum=0),
        keep_shipped_segments=_bool(p, data, "keep_shipped_segments", False),
        shipped_keep_days=_days(p, data, "shipped_keep_days"),
        dead_letter_keep_days=_days(p, data, "dead_letter_keep_days"),
        elasticsearch=_elasticsearch(p, data),
        metering=parse_metering(p, data.get("metering")),
        package_cache=parse_cache(p, data.get("package_cache")),
        running_tasks=_running_tasks(p, data.get("running_tasks")),
    )
    if p:
        lines = [_render(problem) for problem in p]
        raise TrafficConfigError("\n".join(lines), problems=lines)
    return config


def dump_config(data: dict[str, Any]) -> str:
    """The YAML text of a traffic config given as data, checked first with the parser the
    proxy and shipper use, so what the deploy writes is what they accept. Every string is
    written quoted where YAML would read it as another type (a worker named `no`)."""
    parse_config(data)
    text = yaml.safe_dump(data, sort_keys=True, default_flow_style=False, allow_unicode=True)
    if parse_config(yaml.safe_load(text)) != parse_config(data):
        raise TrafficConfigError("traffic config does not survive a YAML round trip; fix: "
                                 "report this as a bug")
    return text


def load_config(path: str | Path) -> TrafficConfig:
    """Read and validate the YAML file at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TrafficConfigError(
            f"cannot read traffic config {path}: {exc.strerror}; fix: check the path given to "
            "--set autocode_traffic_config / --config and its permissions"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TrafficConfigError(f"traffic config {path} is not valid YAML: {exc}") from None
    try:
        return parse_config(data)
    except TrafficConfigError as exc:
        problems = [f"{path}: {item}" for item in exc.problems]
        raise TrafficConfigError("\n".join(problems), problems=problems) from None
