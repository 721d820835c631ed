"""autocode-monitor: GPU memory and the vLLM engines' own load on the orchestrator, as
Prometheus text on a local port, with warnings logged once when a threshold is crossed.

    python -m autocode.serving.monitor --listen 127.0.0.1:9464 \\
        --ray-metrics http://127.0.0.1:8080/metrics --interval 15 \\
        [--gpu-memory-warn 0.95] [--kv-cache-warn 0.9] [--waiting-warn 16] \\
        [--allow-remote] [--verbose]

Every interval it reads:
- each GPU through NVML (nvidia-ml-py's `pynvml`, imported only when read): memory used and
  total, utilisation. No module or no driver gives `autocode_gpu_nvml_up 0` and no GPU lines;
- the engines' metrics from the Ray node's metrics export port (`ray start
  --metrics-export-port N`), where ray.serve.llm's engines publish vLLM's own gauges (its
  `log_engine_metrics`, on by default): KV cache usage, requests waiting and running, per
  model. An unreachable or unreadable page gives `autocode_engine_metrics_up 0`.

GET /metrics answers the latest readings (text format 0.0.4):

    autocode_gpu_nvml_up                                  1 NVML answered, else 0
    autocode_gpu_memory_used_bytes{gpu,name}              per GPU (NVML index = nvidia-smi's)
    autocode_gpu_memory_total_bytes{gpu,name}
    autocode_gpu_utilization_percent{gpu,name}            absent where NVML does not support it
    autocode_engine_metrics_up                            1 the Ray page was read, else 0
    autocode_model_kv_cache_usage_ratio{model}            0..1, the fullest engine of the model
    autocode_model_requests_waiting{model}                summed over the model's engines
    autocode_model_requests_running{model}

A warning (GPU memory share, KV cache usage, requests waiting above its threshold; NVML or
the engines' page unavailable) is logged once when it starts, at most one WARNING line per
interval, and once more (INFO) when it clears; it clears only when the value falls to
CLEAR_FRACTION of its threshold, so a value hovering at the threshold does not flood the log.

The text has no authentication: --listen must be a loopback address unless --allow-remote.
Exit status: 0 stopped by SIGTERM/SIGINT, 1 the port cannot be bound, 2 bad arguments.
At import the standard library and prometheus_client's parser (Ray's page is read with it;
vLLM and Ray depend on it, so the serving venv has it); pynvml is optional.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import logging
import math
import re
import signal
import socket
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any, NamedTuple

from prometheus_client.metrics_core import METRIC_TYPES
from prometheus_client.parser import text_fd_to_metric_families

log = logging.getLogger("autocode.serving.monitor")

DEFAULT_LISTEN = "127.0.0.1:9464"
DEFAULT_RAY_METRICS = "http://127.0.0.1:8080/metrics"
DEFAULT_INTERVAL_S = 15.0
SCRAPE_TIMEOUT_S = 5.0
MAX_SCRAPE_BYTES = 64 * 1024 * 1024
# A warning clears when its value falls to this fraction of its threshold (hysteresis).
CLEAR_FRACTION = 0.9
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# ---------------------------------------------------------------------------- GPUs (NVML)


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_percent: float | None  # None where NVML does not support it (e.g. MIG)

    @property
    def memory_share(self) -> float:
        return self.memory_used_bytes / self.memory_total_bytes if self.memory_total_bytes else 0.0


class NvmlUnavailable(RuntimeError):
    """No GPU readings: nvidia-ml-py is not installed, or NVML (the driver) did not answer."""


def _load_nvml() -> ModuleType:
    try:
        import pynvml  # nvidia-ml-py; optional, hence imported here
    except ImportError as exc:
        raise NvmlUnavailable(f"nvidia-ml-py (pynvml) is not installed: {exc}") from None
    return pynvml


def read_gpus(nvml: Any = None) -> list[GpuReading]:
    """One reading per GPU. `nvml` is the pynvml module, or any object with its functions
    (a test double); by default pynvml is imported now. Raises NvmlUnavailable when the
    module is absent or NVML fails (no driver, no library, a GPU lost)."""
    if nvml is None:
        nvml = _load_nvml()
    nvml_error: type[BaseException] = getattr(nvml, "NVMLError", Exception)
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        raise NvmlUnavailable(f"NVML did not start: {_describe(exc)}") from None
    try:
        readings = []
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            if isinstance(name, bytes):  # nvidia-ml-py before 11.515 returned bytes
                name = name.decode("utf-8", "replace")
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                utilization: float | None = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except nvml_error:  # NVMLError_NotSupported on some devices
                utilization = None
            readings.append(GpuReading(index, str(name), int(memory.used), int(memory.total),
                                       utilization))
        return readings
    except Exception as exc:
        raise NvmlUnavailable(f"NVML reading failed: {_describe(exc)}") from None
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # nothing to do about a failed shutdown
            pass


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ------------------------------------------------------------- Prometheus text, parsing


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


class PrometheusParseError(ValueError):
    pass


# prometheus_client's parser is "laxer than the main Go parser" (its own words): it takes
# `m 1 2 3` (the last field as the timestamp), `m infinity`, `m 1 12.5`, an exemplar after
# the value, escapes such as \t in a label value and any metric name before labels
# (`2x{a="1"} 1`), all of which Prometheus refuses. _check_sample checks these on each
# sample line before the library reads it.
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_SPECIAL_FLOATS = frozenset({"nan", "inf", "+inf", "-inf"})
_TIMESTAMP = re.compile(r"-?\d+")
# From '{' to the first '}' outside a quoted string (a label value or name may hold '}').
_LABELS = re.compile(r'\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\}')
_ESCAPE = re.compile(r"\\(.)")
_TYPES = frozenset({*METRIC_TYPES, "untyped"})  # the library's, with 0.0.4's name of unknown


def parse_prometheus(text: str) -> list[Sample]:
    """The samples of a page in Prometheus' text exposition format, in page order, read by
    prometheus_client's parser: # HELP and # TYPE lines read, other comments skipped, label
    values unescaped (\\\\, \\", \\n), NaN and +/-Inf values, an optional timestamp (checked,
    dropped). Histogram and summary series come as their plain samples (x_bucket{le=...},
    x_sum, x_count, x{quantile=...}). One renaming of the library's: a counter whose # TYPE
    line names it without the _total suffix has its samples named with it (the monitor reads
    only gauges). A malformed line raises PrometheusParseError naming its line number, as
    Prometheus rejects the whole scrape; so does a malformed # HELP or # TYPE line."""
    lines = _Lines(text)
    try:
        return [Sample(sample.name, sample.labels, float(sample.value))
                for family in text_fd_to_metric_families(lines)
                for sample in family.samples]
    except Exception as exc:  # mostly ValueError; the library is not hardened against all
        raise PrometheusParseError(f"line {lines.number}: {str(exc) or type(exc).__name__}: "
                                   f"{lines.current[:200]!r}") from None


class _Lines:
    """The lines of a page for text_fd_to_metric_families (which only iterates over its
    `fd`), counted for the error message, each sample line checked first (_check_sample).
    Lines end at \\n only: str.splitlines() would also split at \\x1c, \\u2028..., which a
    label value may hold."""

    def __init__(self, text: str) -> None:
        self._text = text
        self.number = 0
        self.current = ""

    def __iter__(self) -> Iterator[str]:
        for number, raw in enumerate(self._text.split("\n"), 1):
            self.number, self.current = number, raw.strip()  # the library strips each line
            if self.current.startswith("#"):
                # The library refuses a bad type only when the family ends, lines later;
                # split as it does (a quoted name, which may hold blanks, is left to it).
                parts = self.current.split(None, 3)
                if (len(parts) == 4 and parts[1] == "TYPE" and not parts[2].startswith('"')
                        and parts[3] not in _TYPES):
                    raise PrometheusParseError(f"bad metric type {parts[3]!r}")
            elif self.current:
                _check_sample(self.current)
            yield raw


def _check_sample(line: str) -> None:
    """What the library lets through (the note above _METRIC_NAME): a bad name before labels,
    more than a value and an integer timestamp after the name and labels, escapes other than
    the format's three in the labels."""
    if "{" in line:
        name = line[:line.index("{")].strip()
        if name and not _METRIC_NAME.fullmatch(name):  # none: {"name", ...}, UTF-8 names
            raise PrometheusParseError(f"bad metric name {name!r}")
        labels = _LABELS.match(line, line.index("{"))
        if not labels:
            raise PrometheusParseError("no '}' after the labels")
        for escape in _ESCAPE.finditer(labels.group()):
            if escape.group(1) not in '\\"n':
                raise PrometheusParseError(f"bad escape \\{escape.group(1)} in a label value")
        fields = line[labels.end():].split()
    else:
        fields = line.split()[1:]  # the name is checked by the library
    if not 1 <= len(fields) <= 2:
        raise PrometheusParseError("expected a value and an optional timestamp")
    if fields[0].lower() not in _SPECIAL_FLOATS and not _FLOAT.fullmatch(fields[0]):
        raise PrometheusParseError(f"bad value {fields[0]!r}")  # float() takes 1_000, inf...
    if len(fields) == 2 and not _TIMESTAMP.fullmatch(fields[1]):
        raise PrometheusParseError(f"bad timestamp {fields[1]!r}")


# ------------------------------------------------------------------ the engines' metrics


@dataclass(frozen=True)
class EngineReading:
    model: str
    kv_cache_usage: float | None = None  # fraction 0..1 (vLLM's "_perc" is a fraction)
    requests_waiting: float | None = None
    requests_running: float | None = None


class EngineMetricsUnavailable(RuntimeError):
    """The engines' metrics page could not be read or parsed."""


# vLLM's own gauges (vllm/v1/metrics/loggers.py, label model_name, plus engine):
#   vllm:kv_cache_usage_perc   vllm:num_requests_waiting   vllm:num_requests_running
# Under Ray Serve (ray.serve.llm with log_engine_metrics, vllm's RayPrometheusStatLogger)
# vllm/v1/metrics/ray_wrappers.py replaces every character outside [a-zA-Z0-9_] (the ':')
# by '_' and hands them to ray.util.metrics.Gauge; the Ray node's exporter prefixes its
# namespace "ray_" (ray/_private/telemetry/open_telemetry_metric_recorder.py NAMESPACE).
# So Ray 2.60 with vLLM 0.32 emits, as seen on a real `ray start --metrics-export-port` page:
#   ray_vllm_kv_cache_usage_perc  ray_vllm_num_requests_waiting  ray_vllm_num_requests_running
# with labels model_name, engine, ReplicaId and Ray's own (Component, NodeAddress,
# SessionName, Version, WorkerId, otel_scope_*). All three spellings are matched (vllm:x from
# a bare vLLM server, vllm_x, ray_vllm_x); gpu_cache_usage_perc is vLLM V0's older name.
_ENGINE_GAUGES = {
    "kv_cache_usage_perc": "kv_cache_usage",
    "gpu_cache_usage_perc": "kv_cache_usage",
    "num_requests_waiting": "requests_waiting",
    "num_requests_running": "requests_running",
}
_ENGINE_PREFIXES = ("vllm:", "vllm_", "ray_vllm_")


def _engine_field(name: str) -> str | None:
    for prefix in _ENGINE_PREFIXES:
        if name.startswith(prefix):
            return _ENGINE_GAUGES.get(name[len(prefix):])
    return None


def engines_from_samples(samples: Iterable[Sample]) -> list[EngineReading]:
    """Per model (label model_name): the highest KV cache usage among its engines (the
    fullest one preempts first) and the requests waiting and running summed over them
    (replicas, data-parallel engines, Ray nodes). Non-finite values are skipped."""
    kv: dict[str, float] = {}
    sums: dict[str, dict[str, float]] = {"requests_waiting": {}, "requests_running": {}}
    models: dict[str, None] = {}
    for sample in samples:
        field = _engine_field(sample.name)
        if field is None or not math.isfinite(sample.value):
            continue
        model = sample.labels.get("model_name", "")
        models.setdefault(model)
        if field == "kv_cache_usage":
            kv[model] = max(kv.get(model, -math.inf), sample.value)
        else:
            sums[field][model] = sums[field].get(model, 0.0) + sample.value
    return [EngineReading(model, kv.get(model), sums["requests_waiting"].get(model),
                          sums["requests_running"].get(model))
            for model in sorted(models)]


def scrape_engines(url: str, timeout: float = SCRAPE_TIMEOUT_S) -> list[EngineReading]:
    """The engines' readings from Ray's metrics page at `url` (never through an HTTP proxy:
    it is a local page). Raises EngineMetricsUnavailable when it cannot be read or parsed."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"Accept": "text/plain"})
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read(MAX_SCRAPE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise EngineMetricsUnavailable(f"HTTP {exc.code} from {url}") from None
    except urllib.error.URLError as exc:
        raise EngineMetricsUnavailable(f"{url} unreachable: {exc.reason}") from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise EngineMetricsUnavailable(f"{url} unreadable: {_describe(exc)}") from None
    if len(body) > MAX_SCRAPE_BYTES:
        raise EngineMetricsUnavailable(f"{url}: page larger than {MAX_SCRAPE_BYTES} bytes")
    try:
        samples = parse_prometheus(body.decode("utf-8", "replace"))
    except PrometheusParseError as exc:
        raise EngineMetricsUnavailable(f"{url}: not Prometheus text ({exc})") from None
    return engines_from_samples(samples)


# ------------------------------------------------------------ Prometheus text, rendering
# Written here rather than by prometheus_client's generate_latest (a Collector yielding
# GaugeMetricFamily): that one writes every value as Go writes a float64 (1.0, 87.0,
# 2.147483648e+10 for 20 GiB), where this text has always had integers as integers
# (autocode_engine_metrics_up 1, 21474836480), and its CONTENT_TYPE_LATEST is now version
# 1.0.0 of the format; the families, HELP/TYPE lines and escaping are the same. The tests
# read this text back with the library's parser.

_FAMILIES = (
    ("autocode_gpu_nvml_up", "1 if NVML answered on the last reading, else 0."),
    ("autocode_gpu_memory_used_bytes", "GPU memory in use, by NVML."),
    ("autocode_gpu_memory_total_bytes", "GPU memory in all, by NVML."),
    ("autocode_gpu_utilization_percent", "GPU utilisation over NVML's last sample period."),
    ("autocode_engine_metrics_up", "1 if the engines' metrics page was read, else 0."),
    ("autocode_model_kv_cache_usage_ratio",
     "KV cache usage of the model's fullest engine (vLLM kv_cache_usage_perc), 0..1."),
    ("autocode_model_requests_waiting", "Requests waiting in the model's engines."),
    ("autocode_model_requests_running", "Requests running in the model's engines."),
)


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def render(gpus: Iterable[GpuReading], engines: Iterable[EngineReading], nvml_up: bool,
           engines_up: bool) -> str:
    """The readings as Prometheus text, each family with # HELP and # TYPE (all gauges)."""
    series: dict[str, list[tuple[dict[str, str], float]]] = {name: [] for name, _ in _FAMILIES}
    series["autocode_gpu_nvml_up"].append(({}, 1 if nvml_up else 0))
    series["autocode_engine_metrics_up"].append(({}, 1 if engines_up else 0))
    for gpu in gpus:
        labels = {"gpu": str(gpu.index), "name": gpu.name}
        series["autocode_gpu_memory_used_bytes"].append((labels, gpu.memory_used_bytes))
        series["autocode_gpu_memory_total_bytes"].append((labels, gpu.memory_total_bytes))
        if gpu.utilization_percent is not None:
            series["autocode_gpu_utilization_percent"].append((labels,
                                                               gpu.utilization_percent))
    for engine in engines:
        labels = {"model": engine.model}
        for family, value in (("autocode_model_kv_cache_usage_ratio", engine.kv_cache_usage),
                              ("autocode_model_requests_waiting", engine.requests_waiting),
                              ("autocode_model_requests_running", engine.requests_running)):
            if value is not None:
                series[family].append((labels, value))
    lines = []
    for name, help_text in _FAMILIES:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        for labels, value in series[name]:
            label_text = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{label_text}}} {_format_value(value)}" if label_text
                         else f"{name} {_format_value(value)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------- thresholds, warnings


@dataclass(frozen=True)
class Thresholds:
    gpu_memory_share: float = 0.95  # memory used / total, per GPU
    kv_cache_usage: float = 0.90  # per model, its fullest engine
    requests_waiting: float = 16  # per model, summed over its engines

    def __post_init__(self) -> None:
        for field in ("gpu_memory_share", "kv_cache_usage"):
            value = getattr(self, field)
            if not (isinstance(value, int | float) and 0 < value <= 1):
                raise ValueError(f"{field} must be a share in (0, 1], not {value!r}")
        waiting = self.requests_waiting
        if not (isinstance(waiting, int | float) and math.isfinite(waiting) and waiting >= 0):
            raise ValueError(f"requests_waiting must be a count >= 0, not {waiting!r}")


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def warnings(gpus: Iterable[GpuReading], engines: Iterable[EngineReading],
             thresholds: Thresholds | None = None,
             active: Collection[str] = ()) -> dict[str, str]:
    """The thresholds crossed, as {key: sentence}: the key names the condition ("GPU 0
    memory", "model 'm' KV cache", "model 'm' waiting requests") and stays the same while it
    lasts, the sentence is for a person. A value strictly above its threshold starts a
    warning; one whose key is in `active` (already warned) lasts until the value falls to
    CLEAR_FRACTION of the threshold."""
    thresholds = thresholds or Thresholds()
    found: dict[str, str] = {}

    def crossed(key: str, value: float, threshold: float) -> bool:
        return value > (threshold * CLEAR_FRACTION if key in active else threshold)

    for gpu in gpus:
        key = f"GPU {gpu.index} memory"
        if gpu.memory_total_bytes and crossed(key, gpu.memory_share,
                                              thresholds.gpu_memory_share):
            found[key] = (f"GPU {gpu.index} ({gpu.name}) memory {gpu.memory_share:.1%} used "
                          f"({_gib(gpu.memory_used_bytes)} of {_gib(gpu.memory_total_bytes)}),"
                          f" above the {thresholds.gpu_memory_share:.0%} threshold")
    for engine in engines:
        key = f"model {engine.model!r} KV cache"
        if engine.kv_cache_usage is not None and crossed(key, engine.kv_cache_usage,
                                                         thresholds.kv_cache_usage):
            found[key] = (f"model {engine.model!r} KV cache {engine.kv_cache_usage:.1%} full, "
                          f"above the {thresholds.kv_cache_usage:.0%} threshold: new requests "
                          f"wait and running ones may be preempted")
        key = f"model {engine.model!r} waiting requests"
        if engine.requests_waiting is not None and crossed(key, engine.requests_waiting,
                                                           thresholds.requests_waiting):
            found[key] = (f"model {engine.model!r} has {_format_value(engine.requests_waiting)} "
                          f"requests waiting, above the threshold of "
                          f"{_format_value(thresholds.requests_waiting)}")
    return found


class WarningLog:
    """Logs each warning once when it starts and once when it clears: at most one WARNING
    line (the new warnings, joined) and one INFO line (the cleared ones) per update."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.logger = logger
        self.active: dict[str, str] = {}

    def update(self, current: dict[str, str]) -> tuple[list[str], list[str]]:
        """Returns (started, cleared) keys."""
        started = [key for key in current if key not in self.active]
        cleared = [key for key in self.active if key not in current]
        self.active = dict(current)
        if started:
            self.logger.warning("%s", "; ".join(current[key] for key in started))
        if cleared:
            self.logger.info("cleared: %s", "; ".join(cleared))
        return started, cleared


# ------------------------------------------------------------------------------ the monitor


class Monitor:
    """Reads, warns and keeps the latest text for the HTTP server (thread-safe)."""

    def __init__(self, ray_metrics_url: str | None, thresholds: Thresholds | None = None,
                 nvml: Any = None, logger: logging.Logger = log,
                 timeout: float = SCRAPE_TIMEOUT_S) -> None:
        self.ray_metrics_url = ray_metrics_url
        self.thresholds = thresholds or Thresholds()
        self.nvml = nvml
        self.timeout = timeout
        self.logger = logger
        self.warning_log = WarningLog(logger)
        self._lock = threading.Lock()
        self._text = render([], [], False, False)
        self._refreshes = 0

    @property
    def text(self) -> str:
        with self._lock:
            return self._text

    def refresh(self) -> str:
        problems: dict[str, str] = {}
        try:
            gpus, nvml_up = read_gpus(self.nvml), True
        except NvmlUnavailable as exc:
            gpus, nvml_up = [], False
            problems["NVML"] = f"no GPU readings: {exc}"
        engines: list[EngineReading] = []
        engines_up = False
        if self.ray_metrics_url:
            try:
                engines, engines_up = scrape_engines(self.ray_metrics_url, self.timeout), True
            except EngineMetricsUnavailable as exc:
                problems["engine metrics"] = f"no engine metrics: {exc}"
        current = warnings(gpus, engines, self.thresholds, self.warning_log.active)
        self.warning_log.update({**problems, **current})
        text = render(gpus, engines, nvml_up, engines_up)
        with self._lock:
            self._text = text
            self._refreshes += 1
            first = self._refreshes == 1
        summary = "; ".join(
            [f"GPU {g.index} memory {g.memory_share:.0%}" for g in gpus]
            + [f"model {e.model!r} KV cache {_format_value(e.kv_cache_usage or 0)}, "
               f"{_format_value(e.requests_waiting or 0)} waiting" for e in engines]) or "none"
        self.logger.log(logging.INFO if first else logging.DEBUG, "readings: %s", summary)
        return text

    def run(self, interval: float, stop: threading.Event) -> None:
        """Refreshes every `interval` seconds until `stop` is set; an unexpected error is
        logged (once while it repeats) and the loop goes on."""
        last_error = None
        while not stop.wait(interval):
            try:
                self.refresh()
                last_error = None
            except Exception as exc:  # keep serving the last text
                if _describe(exc) != last_error:
                    self.logger.exception("refresh failed")
                last_error = _describe(exc)


def make_server(monitor: Monitor, host: str, port: int) -> ThreadingHTTPServer:
    """A ThreadingHTTPServer answering GET /metrics with the monitor's latest text."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "autocode-monitor"

        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def _answer(self, body: bool) -> None:
            if urllib.parse.urlsplit(self.path).path != "/metrics":
                payload, status, kind = b"not found: try /metrics\n", 404, "text/plain"
            else:
                payload, status, kind = monitor.text.encode(), 200, CONTENT_TYPE
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if body:
                self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    return Server((host, port), Handler)


# ------------------------------------------------------------------------------------ CLI


def _listen(value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{value!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r}: the port must be 0..65535 "
                                         f"(0: any free port)")
    return host, int(port_text)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve beyond this host


def _url(value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{value!r}: expected an http:// URL, e.g. "
                                         f"{DEFAULT_RAY_METRICS}")
    return value


def _number_up_to(value: str, high: float, expected: str) -> float:
    """A float in (0, high], or argparse's error saying what was expected."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 < number <= high:
        raise argparse.ArgumentTypeError(f"{value!r}: expected {expected}")
    return number


def _share(value: str) -> float:
    return _number_up_to(value, 1, "a share in (0, 1], e.g. 0.9")


def _count(value: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise argparse.ArgumentTypeError(f"{value!r}: expected a whole number >= 0")
    return int(value)


def _interval(value: str) -> float:
    return _number_up_to(value, 86400, "seconds in (0, 86400]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autocode-monitor", description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", type=_listen, default=DEFAULT_LISTEN, metavar="HOST:PORT",
                        help=f"where /metrics is served (default {DEFAULT_LISTEN}; a loopback "
                             f"address unless --allow-remote)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a non-loopback --listen (the text has no authentication)")
    parser.add_argument("--ray-metrics", type=_url, default=DEFAULT_RAY_METRICS, metavar="URL",
                        help=f"the Ray node's metrics page (default {DEFAULT_RAY_METRICS})")
    parser.add_argument("--interval", type=_interval, default=DEFAULT_INTERVAL_S,
                        metavar="SECONDS", help="seconds between readings (default 15)")
    parser.add_argument("--gpu-memory-warn", type=_share, default=Thresholds.gpu_memory_share,
                        metavar="SHARE", help="warn above this GPU memory share (default 0.95)")
    parser.add_argument("--kv-cache-warn", type=_share, default=Thresholds.kv_cache_usage,
                        metavar="SHARE", help="warn above this KV cache usage (default 0.9)")
    parser.add_argument("--waiting-warn", type=_count, default=Thresholds.requests_waiting,
                        metavar="N", help="warn above N requests waiting (default 16)")
    parser.add_argument("--verbose", action="store_true",
                        help="log every reading and request (DEBUG)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    host, port = args.listen
    if not _is_loopback(host) and not args.allow_remote:
        parser.error(f"--listen {host}: not a loopback address, and the metrics text has no "
                     f"authentication; pass --allow-remote to serve it beyond this host")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    monitor = Monitor(args.ray_metrics, Thresholds(args.gpu_memory_warn, args.kv_cache_warn,
                                                   args.waiting_warn),
                      timeout=min(SCRAPE_TIMEOUT_S, args.interval))
    try:
        server = make_server(monitor, host, port)
    except OSError as exc:
        log.error("--listen %s:%d: cannot bind: %s", host, port, exc)
        return 1
    monitor.refresh()  # the first text before the first request
    stop = threading.Event()
    refresher = threading.Thread(target=monitor.run, args=(args.interval, stop),
                                 name="autocode-monitor-refresh", daemon=True)
    refresher.start()

    def shut_down(signum: int, frame: Any) -> None:
        stop.set()
        # shutdown() waits for serve_forever(), which runs in this (the main) thread
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    log.info("serving http://%s:%d/metrics, reading %s every %gs", shown, bound_port,
             args.ray_metrics, args.interval)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        stop.set()
        server.server_close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
