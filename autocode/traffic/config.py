"""Load and validate the traffic logger's YAML config (schema: see the package docstring).

Every error names the field and says how to fix it, and never echoes secret values.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_INDEX = "autocode-traffic"


class TrafficConfigError(ValueError):
    """The traffic config is missing, unreadable or invalid."""


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


@dataclass(frozen=True)
class TrafficConfig:
    spool_dir: Path
    workers: dict[str, str] = field(default_factory=dict)
    redact_headers: tuple[str, ...] = ()
    redact_patterns: tuple[str, ...] = ()
    redact_value_patterns: tuple[str, ...] = ()
    fail_closed: bool = True
    queue_size: int = 10_000
    writer_batch_max: int = 1000
    writer_retry_seconds: float = 1.0
    writer_linger_seconds: float = 0.05
    segment_max_bytes: int = 64 * 1024 * 1024
    min_free_bytes: int = 16 * 1024 * 1024
    keep_shipped_segments: bool = False
    elasticsearch: ElasticsearchConfig = field(default_factory=ElasticsearchConfig)

    @property
    def checkpoint_path(self) -> Path:
        return self.spool_dir / "checkpoint.json"

    @property
    def dead_letter_path(self) -> Path:
        return self.spool_dir / "dead-letter.jsonl"

    @property
    def shipped_dir(self) -> Path:
        return self.spool_dir / "shipped"


def _fail(field_name: str, problem: str, fix: str) -> TrafficConfigError:
    return TrafficConfigError(f"traffic config field '{field_name}' {problem}; fix: {fix}")


def _positive_int(data: dict, key: str, default: int, prefix: str = "", minimum: int = 1) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(
            prefix + key,
            f"must be an integer >= {minimum}, got {value!r}",
            f"set it to an integer such as {default}",
        )
    return value


def _positive_float(data: dict, key: str, default: float, prefix: str = "") -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise _fail(
            prefix + key,
            f"must be a number > 0, got {value!r}",
            f"set it to a number of seconds such as {default}",
        )
    return float(value)


def _non_negative_float(data: dict, key: str, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _fail(key, f"must be a number >= 0, got {value!r}",
                    f"set it to a number of seconds such as {default}")
    return float(value)


def _bool(data: dict, key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise _fail(key, f"must be true or false, got {value!r}", "write true or false unquoted")
    return value


def _string_list(data: dict, key: str, check_regex: bool = False) -> tuple[str, ...]:
    value = data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(key, "must be a list of non-empty strings", f"write e.g. {key}: [\"x-foo\"]")
    if check_regex:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise _fail(
                    key, f"has an invalid regular expression {pattern!r} ({exc})",
                    "correct or quote the pattern (Python re syntax)",
                ) from None
    return tuple(value)


def _reject_unknown(data: dict, known: set[str], prefix: str = "") -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise _fail(
            prefix + str(unknown[0]), "is not a known field",
            f"remove it or use one of: {', '.join(sorted(known))}",
        )


def _workers(data: dict) -> dict[str, str]:
    raw = data.get("workers") or {}
    if not isinstance(raw, dict):
        raise _fail("workers", "must be a mapping of client IP to worker id",
                    "write e.g. workers: {\"10.20.0.11\": w1}")
    workers: dict[str, str] = {}
    for ip, worker_id in raw.items():
        try:
            normal_ip = str(ipaddress.ip_address(str(ip)))
        except ValueError:
            raise _fail(f"workers.{ip}", "is not an IP address",
                        "use the worker's IPv4/IPv6 address as the key") from None
        if not isinstance(worker_id, str | int) or isinstance(worker_id, bool) or worker_id == "":
            raise _fail(f"workers.{ip}", f"must map to a worker id string, got {worker_id!r}",
                        "write e.g. \"10.20.0.11\": w1")
        workers[normal_ip] = str(worker_id)
    return workers


def _elasticsearch(data: dict) -> ElasticsearchConfig:
    raw = data.get("elasticsearch") or {}
    if not isinstance(raw, dict):
        raise _fail("elasticsearch", "must be a mapping", "write e.g. elasticsearch: {url: ...}")
    defaults = ElasticsearchConfig()
    _reject_unknown(raw, set(ElasticsearchConfig.__dataclass_fields__), "elasticsearch.")
    url = raw.get("url", defaults.url)
    if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
        raise _fail("elasticsearch.url", f"must be an http(s) URL, got {url!r}",
                    "write e.g. https://127.0.0.1:9200")
    index = raw.get("index", defaults.index)
    if not isinstance(index, str) or not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", index):
        raise _fail("elasticsearch.index", f"must be a lowercase index/data stream name, got "
                    f"{index!r}", f"use e.g. {DEFAULT_INDEX}")
    paths = {}
    for key in ("ca_certs", "api_key_file"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, str) or not value.startswith("/")):
            raise _fail(f"elasticsearch.{key}", f"must be an absolute file path, got {value!r}",
                        "write an absolute path such as /etc/autocode/...")
        paths[key] = value
    p = "elasticsearch."
    return ElasticsearchConfig(
        url=url.rstrip("/"),
        index=index,
        ca_certs=paths["ca_certs"],
        api_key_file=paths["api_key_file"],
        batch_size=_positive_int(raw, "batch_size", defaults.batch_size, p),
        batch_max_bytes=_positive_int(raw, "batch_max_bytes", defaults.batch_max_bytes, p),
        request_timeout=_positive_float(raw, "request_timeout", defaults.request_timeout, p),
        poll_interval=_positive_float(raw, "poll_interval", defaults.poll_interval, p),
        retry_initial=_positive_float(raw, "retry_initial", defaults.retry_initial, p),
        retry_max=_positive_float(raw, "retry_max", defaults.retry_max, p),
    )


def parse_config(data: Any) -> TrafficConfig:
    """Validate an already-parsed YAML document."""
    if not isinstance(data, dict):
        raise TrafficConfigError(
            "traffic config must be a YAML mapping; fix: start from the example in "
            "autocode.traffic's docstring"
        )
    _reject_unknown(data, set(TrafficConfig.__dataclass_fields__))
    spool_dir = data.get("spool_dir")
    if not isinstance(spool_dir, str) or not spool_dir.startswith("/"):
        raise _fail("spool_dir", f"must be an absolute directory path, got {spool_dir!r}",
                    "set it to e.g. /mnt/data/autocode/logs/traffic")
    defaults = TrafficConfig(spool_dir=Path("/"))
    return TrafficConfig(
        spool_dir=Path(spool_dir),
        workers=_workers(data),
        redact_headers=tuple(h.lower() for h in _string_list(data, "redact_headers")),
        redact_patterns=_string_list(data, "redact_patterns", check_regex=True),
        redact_value_patterns=_string_list(data, "redact_value_patterns", check_regex=True),
        fail_closed=_bool(data, "fail_closed", True),
        queue_size=_positive_int(data, "queue_size", defaults.queue_size),
        writer_batch_max=_positive_int(data, "writer_batch_max", defaults.writer_batch_max),
        writer_retry_seconds=_positive_float(
            data, "writer_retry_seconds", defaults.writer_retry_seconds
        ),
        writer_linger_seconds=_non_negative_float(
            data, "writer_linger_seconds", defaults.writer_linger_seconds
        ),
        segment_max_bytes=_positive_int(
            data, "segment_max_bytes", defaults.segment_max_bytes, minimum=1024
        ),
        min_free_bytes=_positive_int(data, "min_free_bytes", defaults.min_free_bytes, minimum=0),
        keep_shipped_segments=_bool(data, "keep_shipped_segments", False),
        elasticsearch=_elasticsearch(data),
    )


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
        raise TrafficConfigError(f"{path}: {exc}") from None
