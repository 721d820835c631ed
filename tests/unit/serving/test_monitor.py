"""The GPU memory monitor (autocode/serving/monitor.py): the Prometheus text parser on a page
as Ray 2.60 writes it, the engines' metrics scraped from a real local HTTP server, NVML
through a test double (FakeNvml: this machine has no GPU) and without nvidia-ml-py, the
thresholds and their once-when-crossed / once-when-cleared log lines, and the CLI run as a
real process: /metrics read over a socket, bad arguments refused with exit status 2."""

from __future__ import annotations

import logging
import math
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from autocode.serving.monitor import (
    CONTENT_TYPE,
    EngineMetricsUnavailable,
    EngineReading,
    GpuReading,
    Monitor,
    NvmlUnavailable,
    PrometheusParseError,
    Sample,
    Thresholds,
    WarningLog,
    engines_from_samples,
    make_server,
    parse_prometheus,
    read_gpus,
    render,
    scrape_engines,
    warnings,
)

REPO = Path(__file__).resolve().parents[3]
GIB = 2**30

_RAY_LABELS = ('Component="core_worker",NodeAddress="192.0.2.2",ReplicaId="{replica}",'
               'SessionName="session_2026-12-02_14-29-11_800974_3450",Version="2.60.0",'
               'WorkerId="f358ed5f2bc8",engine="0",model_name="{model}",'
               'otel_scope_name="ray._private.telemetry.open_telemetry_metric_recorder",'
               'otel_scope_schema_url="",otel_scope_version=""')


def ray_labels(model: str, replica: str) -> str:
    return _RAY_LABELS.format(model=model, replica=replica)


QWEN = r'qwen \"coder\"\\x'  # as Ray escapes the label value 'qwen "coder"\x'

# Lines as a real `ray start --metrics-export-port` page of Ray 2.60 showed them, the vLLM
# gauges set through ray.util.metrics the way vllm/v1/metrics/ray_wrappers.py sets them
# (names sanitised, tags model_name/engine/ReplicaId). The first model's name holds a quote
# and a backslash, escaped as Ray wrote them; the second model has two replicas.
RAY_TEXT = f"""\
# HELP target_info Target metadata
# TYPE target_info gauge
target_info{{service_name="ray-dashboard-agent",telemetry_sdk_language="python"}} 1.0
# HELP ray_vllm_num_requests_waiting Number of requests waiting to be processed.
# TYPE ray_vllm_num_requests_waiting gauge
ray_vllm_num_requests_waiting{{{ray_labels(QWEN, 'abc123')}}} 3.0
ray_vllm_num_requests_waiting{{{ray_labels('deepseek', 'r1')}}} 10.0
ray_vllm_num_requests_waiting{{{ray_labels('deepseek', 'r2')}}} 9.0
# HELP ray_vllm_num_requests_waiting_by_reason Number of waiting requests by reason.
# TYPE ray_vllm_num_requests_waiting_by_reason gauge
ray_vllm_num_requests_waiting_by_reason{{{ray_labels('deepseek', 'r1')}}} 500.0
# HELP ray_vllm_kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE ray_vllm_kv_cache_usage_perc gauge
ray_vllm_kv_cache_usage_perc{{{ray_labels(QWEN, 'abc123')}}} 0.42
ray_vllm_kv_cache_usage_perc{{{ray_labels('deepseek', 'r1')}}} 0.5
ray_vllm_kv_cache_usage_perc{{{ray_labels('deepseek', 'r2')}}} 0.93
# HELP ray_vllm_num_requests_running Number of requests in model execution batches.
# TYPE ray_vllm_num_requests_running gauge
ray_vllm_num_requests_running{{{ray_labels(QWEN, 'abc123')}}} 2.0
ray_vllm_num_requests_running{{{ray_labels('deepseek', 'r1')}}} 4.0
ray_vllm_num_requests_running{{{ray_labels('deepseek', 'r2')}}} 4.0
# HELP ray_gcs_storage_operation_latency_ms Time to invoke an operation on Gcs storage
# TYPE ray_gcs_storage_operation_latency_ms histogram
ray_gcs_storage_operation_latency_ms_bucket{{Component="gcs_server",Operation="Put",le="0.1"}} 79.0
ray_gcs_storage_operation_latency_ms_bucket{{Component="gcs_server",Operation="Put",le="+Inf"}} 84.0
ray_gcs_storage_operation_latency_ms_sum{{Component="gcs_server",Operation="Put"}} 22.5
ray_gcs_storage_operation_latency_ms_count{{Component="gcs_server",Operation="Put"}} 84.0
# HELP ray_node_mem_used_host Host memory usage on a ray node
# TYPE ray_node_mem_used_host gauge
ray_node_mem_used_host{{IsHeadNode="true",RayNodeType="head",ip="192.0.2.2"}} 1.06586112e+09
"""

# A bare vLLM server's /metrics (prometheus_client's names, with the colon).
VLLM_TEXT = """\
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
vllm:num_requests_waiting{engine="0",model_name="tiny"} 0.0
vllm:num_requests_running{engine="0",model_name="tiny"} 1.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="tiny",reason="capacity"} 7.0
vllm:prompt_tokens_total{engine="0",model_name="tiny"} 123.0
"""


# --------------------------------------------------------------------- the parser


def test_parse_prometheus_reads_a_ray_page_with_escaped_labels():
    samples = parse_prometheus(RAY_TEXT)
    assert all(isinstance(s, Sample) for s in samples)
    assert len(samples) == 16  # comments skipped, every sample kept
    kv = [s for s in samples if s.name == "ray_vllm_kv_cache_usage_perc"]
    assert kv[0].labels["model_name"] == 'qwen "coder"\\x'  # \" and \\ unescaped
    assert kv[0].labels["ReplicaId"] == "abc123"
    assert kv[0].labels["otel_scope_schema_url"] == ""
    assert kv[0].value == 0.42
    buckets = [s for s in samples if s.name.endswith("_bucket")]
    assert [b.labels["le"] for b in buckets] == ["0.1", "+Inf"]
    assert samples[-1] == Sample("ray_node_mem_used_host",
                                 {"IsHeadNode": "true", "RayNodeType": "head",
                                  "ip": "192.0.2.2"}, 1.06586112e09)


def test_parse_prometheus_values_timestamps_and_spacing():
    text = (
        "# a free comment\n"
        "\n"
        "plain 1\n"
        "nan_value NaN\n"
        "up_inf +Inf\n"
        "down_inf -Inf\r\n"
        'with_ts{a="1"} 2.5e-3 1700000000000\n'
        'spaced { a = "x" , b="y\\ny", } 7\n'
        "empty{} 0\n"
        'odd{v="\x1c\u2028"} 3\n'  # not line breaks in this format
        "  indented 4"
    )
    got = {s.name: s for s in parse_prometheus(text)}
    assert got["plain"] == Sample("plain", {}, 1.0)
    assert math.isnan(got["nan_value"].value)
    assert got["up_inf"].value == math.inf and got["down_inf"].value == -math.inf
    assert got["with_ts"] == Sample("with_ts", {"a": "1"}, 0.0025)
    assert got["spaced"].labels == {"a": "x", "b": "y\ny"}
    assert got["empty"].labels == {}
    assert got["odd"].labels == {"v": "\x1c\u2028"}
    assert got["indented"].value == 4


@pytest.mark.parametrize("line", [
    "1bad 1",                   # name starts with a digit
    "novalue",
    'm{a="1"}',                 # no value
    "m 1 2 3",
    "m 1_000",                  # float() would take it
    "m infinity",
    "m 1 12.5",                 # timestamp not an integer
    'm{a="1} 2',                # unterminated value
    'm{a="\\t"} 1',             # not an escape the format has
    'm{a="1",a="2"} 1',         # label twice
    'm{a=1} 1',                 # unquoted
    'm{a="1" b="2"} 1',         # no comma
    'm{-a="1"} 1',
    "m-x 1",
])
def test_parse_prometheus_refuses_malformed_lines_naming_the_line(line):
    with pytest.raises(PrometheusParseError, match=r"^line 2: "):
        parse_prometheus("ok 1\n" + line + "\n")


# What prometheus_client's parser reads that the hand-written one before it did not (or only
# skipped): the # HELP and # TYPE lines, quoted (UTF-8) names, each kind of family.
LIBRARY_TEXT = """\
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{model_name="tiny",le="0.3"} 1.0
vllm:e2e_request_latency_seconds_bucket{model_name="tiny",le="+Inf"} 2.0
vllm:e2e_request_latency_seconds_count{model_name="tiny"} 2.0
vllm:e2e_request_latency_seconds_sum{model_name="tiny"} 0.9
# HELP rpc_seconds A summary, its help with an escaped \\\\ and a \\n.
# TYPE rpc_seconds summary
rpc_seconds{quantile="0.5"} NaN
rpc_seconds{quantile="0.99"} +Inf
rpc_seconds_sum 1.5e3
rpc_seconds_count 7
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="tiny"} 123.0
# HELP vllm:prompt_tokens_created Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_created gauge
vllm:prompt_tokens_created{engine="0",model_name="tiny"} 1.7e+09
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 5 -1700000000000
vllm:num_requests_waiting{engine="1",model_name="tiny"}\t2\t1700000000000
# TYPE vllm:kv_cache_usage_perc untyped
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} .5
vllm:kv_cache_usage_perc{engine="1",model_name="tiny"} NaN
{"vllm.num_requests_running", model_name="tiny"} 3
m{"label.with.dots"="a}b", tab="\\\\t"} 5.
"""


def test_parse_prometheus_reads_each_kind_of_family_as_plain_samples():
    samples = parse_prometheus(LIBRARY_TEXT)
    assert [s.name for s in samples] == [
        "vllm:e2e_request_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket",
        "vllm:e2e_request_latency_seconds_count", "vllm:e2e_request_latency_seconds_sum",
        "rpc_seconds", "rpc_seconds", "rpc_seconds_sum", "rpc_seconds_count",
        "vllm:prompt_tokens_total", "vllm:prompt_tokens_created",
        "vllm:num_requests_waiting", "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc", "vllm:kv_cache_usage_perc",
        "vllm.num_requests_running", "m"]
    assert all(type(s.value) is float for s in samples)  # the library gives ints for "7"
    assert samples[1] == Sample("vllm:e2e_request_latency_seconds_bucket",
                                {"model_name": "tiny", "le": "+Inf"}, 2.0)
    assert math.isnan(samples[4].value) and samples[5].value == math.inf
    assert samples[4].labels == {"quantile": "0.5"}
    assert samples[6].value == 1500.0 and samples[7].value == 7.0
    # timestamps (negative, or after a tab) are read and dropped
    assert [s.value for s in samples[10:12]] == [5.0, 2.0]
    assert samples[12].value == 0.5
    # a quoted UTF-8 metric name and label name (the text format of Prometheus 3)
    assert samples[14] == Sample("vllm.num_requests_running", {"model_name": "tiny"}, 3.0)
    assert samples[15] == Sample("m", {"label.with.dots": "a}b", "tab": "\\t"}, 5.0)
    # the engines: histograms, summaries and counters are not gauges the monitor reads;
    # the NaN engine is skipped; a dotted name is none of the three spellings matched
    assert engines_from_samples(samples) == [EngineReading("tiny", 0.5, 7.0, None)]


def test_parse_prometheus_names_a_counter_with_its_total_suffix():
    # prometheus_client's (OpenMetrics') naming: the monitor reads only gauges
    assert parse_prometheus("# TYPE c counter\nc 1\n") == [Sample("c_total", {}, 1.0)]
    assert parse_prometheus("# TYPE c_total counter\nc_total 1\n") == [
        Sample("c_total", {}, 1.0)]


@pytest.mark.parametrize(("text", "where"), [
    # malformed # HELP and # TYPE lines, which the old parser skipped as comments
    ("# TYPE m weird\nm 1\n", "line 2: bad metric type 'weird'"),
    ("# TYPE m gauge extra\nm 1\n", "line 2: bad metric type 'gauge extra'"),
    ("# TYPE m\nm 1\n", "line 2: "),
    ("# HELP 1bad some text\n", "line 2: "),
    # what the library alone would take
    ('m{a="1"} 1 # {trace_id="abc"} 2\n', "line 2: expected a value and an optional"),
    ('m{a="x"} 1 y{b="}"} 2\n', "line 2: expected a value and an optional"),
    ('2m{a="1"} 1\n', "line 2: bad metric name '2m'"),
    ('m{a="1"} 1 1700000000000.5\n', "line 2: bad timestamp"),
    ("m +nan\n", "line 2: bad value '\\+nan'"),
])
def test_parse_prometheus_refuses_what_prometheus_refuses_at_its_line(text, where):
    with pytest.raises(PrometheusParseError, match="^" + where):
        parse_prometheus("ok 1\n" + text)


def test_a_bad_type_is_named_at_its_line_not_where_its_family_ends():
    page = "# TYPE a gauge\na 1\n# TYPE b summery\nb 1\nb 2\n\n# TYPE c gauge\nc 1\n"
    with pytest.raises(PrometheusParseError, match=r"^line 3: bad metric type 'summery'"):
        parse_prometheus(page)


def test_scrape_engines_of_a_page_with_every_kind_of_family():
    with metrics_page(LIBRARY_TEXT) as page:
        assert scrape_engines(page.url, timeout=3) == [EngineReading("tiny", 0.5, 7.0, None)]
        page.page["body"] = LIBRARY_TEXT + "# TYPE broken gauge\nbroken{a=\"1\"} 1 2 3\n"
        line = LIBRARY_TEXT.count("\n") + 2
        with pytest.raises(EngineMetricsUnavailable,
                           match=rf"not Prometheus text \(line {line}: expected a value"):
            scrape_engines(page.url, timeout=3)

# ------------------------------------------------------------ the engines' metrics


def test_engines_from_a_ray_page_per_model():
    engines = {e.model: e for e in engines_from_samples(parse_prometheus(RAY_TEXT))}
    assert engines['qwen "coder"\\x'] == EngineReading('qwen "coder"\\x', 0.42, 3.0, 2.0)
    # two replicas: the fullest KV cache, the requests summed; _by_reason is not counted
    assert engines["deepseek"] == EngineReading("deepseek", 0.93, 19.0, 8.0)
    assert len(engines) == 2


def test_engines_from_a_bare_vllm_page_and_the_older_names():
    assert engines_from_samples(parse_prometheus(VLLM_TEXT)) == [
        EngineReading("tiny", 0.25, 0.0, 1.0)]
    older = parse_prometheus('vllm:gpu_cache_usage_perc{model_name="old"} 0.5\n'
                             'vllm_num_requests_waiting{model_name="old"} 2\n'
                             'vllm:num_requests_running{model_name="old"} NaN\n')
    assert engines_from_samples(older) == [EngineReading("old", 0.5, 2.0, None)]


class _Page(BaseHTTPRequestHandler):
    def do_GET(self):
        page = self.server.page
        body = page["body"].encode()
        self.send_response(page["status"])
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def metrics_page(body: str = RAY_TEXT, status: int = 200):
    """A real HTTP server on loopback serving `body` at any path; its page dict can be
    changed while it runs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    server.daemon_threads = True
    server.page = {"body": body, "status": status}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{server.server_address[1]}/metrics",
                              page=server.page)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scrape_engines_from_a_local_http_server_ignoring_proxy_settings(monkeypatch):
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with metrics_page() as page:
        engines = scrape_engines(page.url, timeout=3)
    assert [e.model for e in engines] == ["deepseek", 'qwen "coder"\\x']
    assert engines[0].kv_cache_usage == 0.93


def test_scrape_engines_unavailable_cases():
    with metrics_page(status=500) as page:
        with pytest.raises(EngineMetricsUnavailable, match="HTTP 500"):
            scrape_engines(page.url, timeout=3)
        page.page.update(status=200, body="<html>dashboard</html>\n")
        with pytest.raises(EngineMetricsUnavailable, match="not Prometheus text"):
            scrape_engines(page.url, timeout=3)
    with pytest.raises(EngineMetricsUnavailable, match="unreachable"):
        scrape_engines(f"http://127.0.0.1:{free_port()}/metrics", timeout=3)


def test_monitor_reports_engine_metrics_down_when_unreachable():
    monitor = Monitor(f"http://127.0.0.1:{free_port()}/metrics", nvml=FakeNvml([]), timeout=3)
    text = monitor.refresh()
    assert "autocode_engine_metrics_up 0\n" in text
    assert "autocode_model_kv_cache_usage_ratio{" not in text
    assert "engine metrics" in monitor.warning_log.active


# ------------------------------------------------------------------------- NVML


class FakeNvml:
    """Test double of nvidia-ml-py's pynvml (this machine has no GPU): the functions
    read_gpus calls, answering from `gpus`, and pynvml's NVMLError hierarchy."""

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):  # noqa: N801 (pynvml's name)
        pass

    class NVMLError_DriverNotLoaded(NVMLError):  # noqa: N801
        pass

    def __init__(self, gpus, init_error=None, names_as_bytes=False):
        self.gpus = gpus  # [{"name", "used", "total", "util"}], util None: not supported
        self.init_error = init_error
        self.names_as_bytes = names_as_bytes
        self.calls: list[str] = []

    def nvmlInit(self):
        self.calls.append("init")
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("handle", index)

    def nvmlDeviceGetName(self, handle):
        name = self.gpus[handle[1]]["name"]
        return name.encode() if self.names_as_bytes else name

    def nvmlDeviceGetMemoryInfo(self, handle):
        gpu = self.gpus[handle[1]]
        if gpu.get("lost"):
            raise self.NVMLError("GPU is lost")
        return SimpleNamespace(total=gpu["total"], used=gpu["used"],
                               free=gpu["total"] - gpu["used"])

    def nvmlDeviceGetUtilizationRates(self, handle):
        util = self.gpus[handle[1]]["util"]
        if util is None:
            raise self.NVMLError_NotSupported("Not Supported")
        return SimpleNamespace(gpu=util, memory=10)


def two_a5000(used0=20 * GIB, used1=4 * GIB):
    return [{"name": "NVIDIA RTX A5000", "used": used0, "total": 24 * GIB, "util": 87},
            {"name": "NVIDIA RTX A5000", "used": used1, "total": 24 * GIB, "util": None}]


@pytest.mark.parametrize("as_bytes", [False, True])
def test_read_gpus_through_fake_nvml(as_bytes):
    nvml = FakeNvml(two_a5000(), names_as_bytes=as_bytes)
    gpus = read_gpus(nvml)
    assert gpus == [GpuReading(0, "NVIDIA RTX A5000", 20 * GIB, 24 * GIB, 87.0),
                    GpuReading(1, "NVIDIA RTX A5000", 4 * GIB, 24 * GIB, None)]
    assert gpus[0].memory_share == pytest.approx(20 / 24)
    assert nvml.calls == ["init", "shutdown"]


def test_read_gpus_no_driver_and_a_lost_gpu_with_fake_nvml():
    no_driver = FakeNvml([], init_error=FakeNvml.NVMLError_DriverNotLoaded("Driver Not Loaded"))
    with pytest.raises(NvmlUnavailable, match="DriverNotLoaded: Driver Not Loaded"):
        read_gpus(no_driver)
    lost = FakeNvml([{"name": "x", "used": 1, "total": 2, "util": 1, "lost": True}])
    with pytest.raises(NvmlUnavailable, match="GPU is lost"):
        read_gpus(lost)
    assert lost.calls == ["init", "shutdown"]


def test_without_nvidia_ml_py_nvml_is_down_and_nothing_crashes(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    with pytest.raises(NvmlUnavailable, match="not installed"):
        read_gpus()
    monitor = Monitor(None)
    text = monitor.refresh()
    assert "autocode_gpu_nvml_up 0\n" in text
    assert "autocode_gpu_memory_used_bytes{" not in text
    assert "not installed" in monitor.warning_log.active["NVML"]


def test_monitor_with_fake_nvml_and_engines():
    with metrics_page() as page:
        text = Monitor(page.url, nvml=FakeNvml(two_a5000()), timeout=3).refresh()
    assert "autocode_gpu_nvml_up 1\n" in text
    a5000 = 'name="NVIDIA RTX A5000"'
    assert f'autocode_gpu_memory_used_bytes{{gpu="0",{a5000}}} {20 * GIB}\n' in text
    assert f'autocode_gpu_memory_total_bytes{{gpu="1",{a5000}}} {24 * GIB}\n' in text
    assert 'autocode_gpu_utilization_percent{gpu="0",name="NVIDIA RTX A5000"} 87\n' in text
    assert 'autocode_gpu_utilization_percent{gpu="1"' not in text  # not supported there
    assert "autocode_engine_metrics_up 1\n" in text
    assert 'autocode_model_kv_cache_usage_ratio{model="deepseek"} 0.93\n' in text
    assert 'autocode_model_requests_waiting{model="deepseek"} 19\n' in text
    assert 'autocode_model_requests_running{model="qwen \\"coder\\"\\\\x"} 2\n' in text


# ------------------------------------------------------------------------ render


FAMILIES = ["autocode_gpu_nvml_up", "autocode_gpu_memory_used_bytes",
            "autocode_gpu_memory_total_bytes", "autocode_gpu_utilization_percent",
            "autocode_engine_metrics_up", "autocode_model_kv_cache_usage_ratio",
            "autocode_model_requests_waiting", "autocode_model_requests_running"]


def test_render_has_help_and_type_and_parses_back():
    gpus = [GpuReading(0, 'odd "name" \\ \n', 5, 10, 12.5)]
    engines = [EngineReading('m "1"', 0.5, 3.0, None)]
    text = render(gpus, engines, nvml_up=True, engines_up=False)
    for family in FAMILIES:
        assert f"# HELP {family} " in text and f"# TYPE {family} gauge\n" in text
    samples = parse_prometheus(text)
    assert Sample("autocode_gpu_memory_used_bytes",
                  {"gpu": "0", "name": 'odd "name" \\ \n'}, 5.0) in samples
    assert Sample("autocode_gpu_utilization_percent",
                  {"gpu": "0", "name": 'odd "name" \\ \n'}, 12.5) in samples
    assert Sample("autocode_model_kv_cache_usage_ratio", {"model": 'm "1"'}, 0.5) in samples
    assert Sample("autocode_engine_metrics_up", {}, 0.0) in samples
    assert not [s for s in samples if s.name == "autocode_model_requests_running"]
    assert text.endswith("\n") and "\n\n" not in text


def test_render_reads_back_with_prometheus_client_as_gauge_families():
    name = 'odd "name" \\ \n'
    gpus = [GpuReading(0, name, 20 * GIB, 24 * GIB, None)]
    text = render(gpus, [EngineReading("m", math.nan, math.inf, 0.0)], True, True)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert list(families) == FAMILIES
    assert {f.type for f in families.values()} == {"gauge"}
    assert all(f.documentation for f in families.values())
    assert [(s.labels, s.value) for s in families["autocode_gpu_memory_used_bytes"].samples] \
        == [({"gpu": "0", "name": name}, 20 * GIB)]
    assert f"}} {20 * GIB}\n" in text  # an integer as an integer, not 2.147483648e+10
    assert families["autocode_gpu_utilization_percent"].samples == []
    assert math.isnan(families["autocode_model_kv_cache_usage_ratio"].samples[0].value)
    assert 'autocode_model_requests_waiting{model="m"} +Inf\n' in text
    assert 'autocode_model_requests_running{model="m"} 0\n' in text


# -------------------------------------------------------------- thresholds, warnings


def test_thresholds_defaults_and_validation():
    assert Thresholds() == Thresholds(0.95, 0.90, 16)
    for bad in ({"gpu_memory_share": 0}, {"gpu_memory_share": 1.01},
                {"kv_cache_usage": -0.1}, {"kv_cache_usage": math.nan},
                {"requests_waiting": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Thresholds(**bad)
    Thresholds(gpu_memory_share=1.0, kv_cache_usage=1.0, requests_waiting=0)


def test_warnings_above_the_thresholds_only():
    t = Thresholds()
    gpus = [GpuReading(0, "A5000", int(23.5 * GIB), 24 * GIB, 90.0),
            GpuReading(1, "A5000", int(0.95 * 24 * GIB), 24 * GIB, 90.0),  # at, not above
            GpuReading(2, "broken", 0, 0, None)]
    engines = [EngineReading("hot", 0.95, 17.0, 4.0), EngineReading("ok", 0.9, 16.0, 4.0),
               EngineReading("none")]
    found = warnings(gpus, engines, t)
    assert sorted(found) == ["GPU 0 memory", "model 'hot' KV cache",
                             "model 'hot' waiting requests"]
    assert found["GPU 0 memory"] == ("GPU 0 (A5000) memory 97.9% used (23.5 GiB of "
                                     "24.0 GiB), above the 95% threshold")
    assert "KV cache 95.0% full, above the 90% threshold" in found["model 'hot' KV cache"]
    assert found["model 'hot' waiting requests"] == (
        "model 'hot' has 17 requests waiting, above the threshold of 16")
    assert warnings(gpus, engines, Thresholds(1.0, 1.0, 100)) == {}


def test_a_warning_lasts_until_the_value_falls_well_below_its_threshold():
    t = Thresholds(kv_cache_usage=0.9)
    key = "model 'm' KV cache"
    at = [EngineReading("m", 0.85)]  # below 0.9, above 0.9 x CLEAR_FRACTION
    assert warnings([], at, t) == {}
    assert key in warnings([], at, t, active={key})
    assert warnings([], [EngineReading("m", 0.80)], t, active={key}) == {}


def test_warning_log_once_when_crossed_once_when_cleared(caplog):
    log = WarningLog(logging.getLogger("test.monitor"))
    caplog.set_level(logging.INFO, logger="test.monitor")
    a, b = {"A": "a is high"}, {"B": "b is high"}
    assert log.update({**a, **b}) == (["A", "B"], [])
    assert log.update({**a, **b}) == ([], [])
    assert log.update(a) == ([], ["B"])
    assert log.update({}) == ([], ["A"])
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "a is high; b is high"), ("INFO", "cleared: B"), ("INFO", "cleared: A")]


def test_monitor_logs_a_crossing_once_over_many_intervals(caplog):
    caplog.set_level(logging.INFO, logger="test.monitor.intervals")
    nvml = FakeNvml(two_a5000(used0=20 * GIB))
    with metrics_page(VLLM_TEXT) as page:
        monitor = Monitor(page.url, nvml=nvml, timeout=3,
                          logger=logging.getLogger("test.monitor.intervals"))

        def interval(used0, kv):
            caplog.clear()
            nvml.gpus[0]["used"] = used0
            page.page["body"] = VLLM_TEXT.replace("} 0.25", f"}} {kv}")
            monitor.refresh()
            return [(r.levelname, r.getMessage()) for r in caplog.records
                    if r.levelno >= logging.INFO and not r.getMessage().startswith("readings")]

        assert interval(20 * GIB, 0.25) == []
        crossed = interval(int(23.9 * GIB), 0.97)  # both cross: one line
        assert len(crossed) == 1 and crossed[0][0] == "WARNING"
        assert "GPU 0 (NVIDIA RTX A5000) memory 99.6% used" in crossed[0][1]
        assert "model 'tiny' KV cache 97.0% full" in crossed[0][1]
        for _ in range(3):
            assert interval(int(23.9 * GIB), 0.96) == []
        assert interval(int(23.9 * GIB), 0.2) == [("INFO", "cleared: model 'tiny' KV cache")]
        page.page["status"] = 503
        down = interval(int(23.9 * GIB), 0.2)
        assert len(down) == 1 and "no engine metrics: HTTP 503" in down[0][1]
        assert interval(int(23.9 * GIB), 0.2) == []
        page.page["status"] = 200
        assert interval(10 * GIB, 0.2) == [("INFO", "cleared: engine metrics; GPU 0 memory")]


def test_metrics_server_in_process():
    monitor = Monitor(None, nvml=FakeNvml(two_a5000()))
    monitor.refresh()
    server = make_server(monitor, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        status, headers, body = http_get(server.server_address[1], "/metrics")
        assert status == 200 and f"content-type: {CONTENT_TYPE}" in headers.lower()
        assert body == monitor.text
        assert http_get(server.server_address[1], "/")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


# -------------------------------------------------------------------------- CLI


def http_get(port: int, path: str) -> tuple[int, str, str]:
    """GET over a plain socket; (status, header block, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head.decode(), body.decode()


def monitor_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "autocode.serving.monitor", *args]


def test_cli_serves_metrics_over_a_socket_and_stops_on_sigterm():
    with metrics_page() as page:
        proc = subprocess.Popen(
            monitor_cli("--listen", "127.0.0.1:0", "--ray-metrics", page.url,
                        "--interval", "0.2", "--kv-cache-warn", "0.9"),
            cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr],
                                  daemon=True)
        reader.start()
        try:
            port, seen = None, []
            deadline = time.monotonic() + 8
            while port is None and time.monotonic() < deadline:
                try:
                    seen.append(lines.get(timeout=0.2))
                except queue.Empty:
                    assert proc.poll() is None, seen
                    continue
                found = re.search(r"serving http://127\.0\.0\.1:(\d+)/metrics", seen[-1])
                port = int(found.group(1)) if found else None
            assert port, seen
            status, headers, body = http_get(port, "/metrics")
            assert status == 200 and "text/plain; version=0.0.4" in headers
            assert re.search(r"^autocode_gpu_nvml_up [01]$", body, re.M)
            assert "autocode_engine_metrics_up 1\n" in body
            assert 'autocode_model_kv_cache_usage_ratio{model="deepseek"} 0.93\n' in body
            # deepseek at 0.93 is above 0.9: warned once at start, not again each interval
            time.sleep(0.7)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=5) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    reader.join(5)  # stderr closed: every line is in the queue
    while not lines.empty():
        seen.append(lines.get())
    kv_warnings = [x for x in seen if "model 'deepseek' KV cache 93.0% full" in x]
    assert len(kv_warnings) == 1 and " WARNING " in kv_warnings[0]
    assert seen[-1].rstrip().endswith("stopped")


@pytest.mark.parametrize(("args", "flag"), [
    (["--listen", "127.0.0.1:70000"], "--listen"),
    (["--listen", "nonsense"], "--listen"),
    (["--listen", "0.0.0.0:9464"], "--allow-remote"),
    (["--listen", "192.0.2.2:9464"], "--allow-remote"),
    (["--listen", "metrics.example:9464"], "--allow-remote"),
    (["--kv-cache-warn", "1.5"], "--kv-cache-warn"),
    (["--gpu-memory-warn", "0"], "--gpu-memory-warn"),
    (["--gpu-memory-warn", "lots"], "--gpu-memory-warn"),
    (["--waiting-warn", "-1"], "--waiting-warn"),
    (["--interval", "0"], "--interval"),
    (["--ray-metrics", "ftp://127.0.0.1/metrics"], "--ray-metrics"),
])
def test_cli_bad_arguments_exit_2_naming_the_flag(args, flag):
    done = subprocess.run(monitor_cli(*args), cwd=REPO, capture_output=True, text=True,
                          timeout=10)
    assert done.returncode == 2, done.stderr
    assert flag in done.stderr


def test_cli_port_in_use_exits_1_naming_listen():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(monitor_cli("--listen", f"127.0.0.1:{port}"), cwd=REPO,
                              capture_output=True, text=True, timeout=10)
    assert done.returncode == 1
    assert f"--listen 127.0.0.1:{port}: cannot bind" in done.stderr
