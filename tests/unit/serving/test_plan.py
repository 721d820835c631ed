"""The GPU memory plan (autocode/serving/plan.py), by arithmetic only: the seed's config
refused with the model, the shortfall and a fix; the defaults fitting 2 x RTX A5000; one
80 GB GPU; the odd cases; and `autocode-plan`'s table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autocode.serving.plan import (
    GIB,
    KIB,
    MAX_GPU_SHARE,
    PlanInputError,
    estimate_weights_gib,
    make_plan,
    parse,
    plan_from_settings,
)
from tasks.serving import A5000_X2, DEFAULT_MODELS, SEED_MODELS

REPO = Path(__file__).resolve().parents[3]

H100_80GB = {"count": 1, "memory_mib": 81559}


def model(**changes):
    return {"name": "m", "model": "org/m", "architecture": "qwen2.5-32b",
            "quantization": "awq", "tensor_parallel_size": 1,
            "gpu_memory_utilization": 0.9, "max_model_len": 8192, **changes}


def texts(plan) -> str:
    return "\n".join(f"{f}: {t}" for f, t in plan.problems)


def test_kv_cache_per_token_matches_the_architectures():
    gpus, models = parse(A5000_X2, [model(name="a"), model(name="b",
                                                            architecture="qwen2.5-14b")])
    assert models[0].kv_bytes_per_token == 256 * KIB  # 64 layers x 8 KV heads x 128 x 2 x 2
    assert models[1].kv_bytes_per_token == 192 * KIB  # 48 layers
    # Tensor parallel 2 splits the KV heads: half of it on each GPU.
    tp2 = parse(A5000_X2, [model(tensor_parallel_size=2)])[1][0]
    assert tp2.kv_bytes_per_token_per_gpu == 128 * KIB


def test_weight_estimates_match_the_published_checkpoints():
    from autocode.serving.plan import ARCHITECTURES
    # bf16 32B: about 65 GB; AWQ/GPTQ int4 32B: 18-19.5 GB; 14B AWQ: about 10 GB.
    assert 64e9 < estimate_weights_gib(ARCHITECTURES["qwen2.5-32b"], "none") * GIB < 66e9
    assert 18e9 < estimate_weights_gib(ARCHITECTURES["qwen2.5-32b"], "awq") * GIB < 19.5e9
    assert 9.5e9 < estimate_weights_gib(ARCHITECTURES["qwen2.5-14b"], "awq") * GIB < 10.5e9


def test_the_seeds_configuration_is_refused_with_every_reason():
    plan = plan_from_settings(A5000_X2, SEED_MODELS)
    assert not plan.ok and not plan.placements
    text = texts(plan)
    # Each 32B model in bf16 is larger than both GPUs together.
    assert ("models[0].model: model 'qwen-2.5-coder-32b' (Qwen/Qwen2.5-Coder-32B-Instruct) "
            "needs 60.5 GiB of weights, more than all 2 GPU(s) can give together (45.6 GiB "
            "at 0.95 of each); short by 18.0 GiB; use a quantised variant (AWQ/GPTQ int4 "
            "weights are about 17.9 GiB") in text
    assert "models[1].model: model 'deepseek-r1-32b'" in text
    # Two TP2 models at 0.85 cannot share the two GPUs, whatever their size.
    assert ("models[1].gpu_memory_utilization: model 'deepseek-r1-32b' (always-on, "
            "tensor_parallel_size 2) cannot share GPU 0, 1 with 'qwen-2.5-coder-32b' at 0.85: "
            "vLLM reserves gpu_memory_utilization of each GPU per instance, so GPU 0 would "
            "need 1.70 of itself, more than 0.95; short by 18.0 GiB per GPU; use mode "
            "on-demand for 'deepseek-r1-32b'") in text
    # The 14B coder in bf16 does not fit one GPU; TP2 or int4 would.
    assert ("models[2].gpu_memory_utilization: model 'qwen-2.5-coder-14b' does not fit: its "
            "weights (27.4 GiB per GPU)") in text
    assert "tensor_parallel_size 2 or a quantised variant" in text
    assert "REFUSED: 5 problem(s)" in plan.table()


def test_the_defaults_fit_two_a5000s():
    plan = plan_from_settings(A5000_X2, DEFAULT_MODELS)
    assert plan.ok, texts(plan)
    coder = plan.placement("qwen-2.5-coder-32b")
    assert coder.gpus == (0, 1) and coder.model.mode == "always-on"
    assert coder.kv_tokens >= 32768 and coder.full_length_sequences == 1
    for name in ("qwen-2.5-coder-14b", "deepseek-r1-14b"):
        placed = plan.placement(name)
        assert placed.gpus == (0, 1) and placed.model.mode == "on-demand"
        assert placed.kv_tokens >= placed.model.max_model_len
    assert plan.share(0, "always-on") + 0.33 <= MAX_GPU_SHARE + 1e-9
    assert not plan.on_demand_together  # one on-demand model at a time
    table = plan.table()
    assert "qwen-2.5-coder-32b  always-on  0,1" in table and table.endswith("fits")
    assert "one at a time" in table


def test_one_80gb_gpu_holds_the_seeds_models_quantised_at_tp1():
    models = [model(name="coder", max_model_len=32768),
              model(name="r1", max_model_len=32768, gpu_memory_utilization=0.35),
              model(name="coder-14b", architecture="qwen2.5-14b", mode="on-demand",
                    gpu_memory_utilization=0.2, max_model_len=16384)]
    models[0]["gpu_memory_utilization"] = 0.40
    plan = plan_from_settings(H100_80GB, models)
    assert plan.ok, texts(plan)
    assert [p.gpus for p in plan.placements] == [(0,), (0,), (0,)]
    assert plan.placement("coder").full_length_sequences == 1  # 51,072 tokens
    # The seed's TP2 does not exist on one GPU.
    seed = plan_from_settings(H100_80GB, SEED_MODELS)
    assert ("models[0].tensor_parallel_size: model 'qwen-2.5-coder-32b': "
            "tensor_parallel_size 2 needs 2 GPUs, the orchestrator has 1; set "
            "tensor_parallel_size to at most 1") in texts(seed)


def test_tensor_parallel_larger_than_the_gpu_count():
    plan = plan_from_settings(A5000_X2, [model(tensor_parallel_size=4)])
    assert texts(plan).startswith("models[0].tensor_parallel_size: model 'm': "
                                  "tensor_parallel_size 4 needs 4 GPUs, the orchestrator has 2")


def test_tensor_parallel_that_does_not_divide_the_heads():
    plan = plan_from_settings({"count": 3, "memory_mib": 81559},
                              [model(tensor_parallel_size=3)])
    assert "does not divide its 40 attention heads and 8 KV heads" in texts(plan)


def test_zero_memory_left_for_the_kv_cache():
    # 32B AWQ on one A5000 at 0.80: 17.9 GiB of weights + 1.5 overhead > 19.2 reserved.
    plan = plan_from_settings(A5000_X2, [model(gpu_memory_utilization=0.8)])
    text = texts(plan)
    assert ("models[0].gpu_memory_utilization: model 'm' does not fit: its weights (17.9 GiB "
            "per GPU) and overhead (1.5 GiB) leave no memory for the KV cache in 0.8 x 24.0 "
            "GiB = 19.2 GiB per GPU; short by") in text
    assert "tensor_parallel_size 2" in text
    assert plan.placements == []


def test_a_kv_cache_smaller_than_one_sequence_names_the_longest_that_fits():
    plan = plan_from_settings(A5000_X2, [model(gpu_memory_utilization=0.9,
                                               max_model_len=16384)])
    text = texts(plan)
    assert "fewer than one sequence of max_model_len 16384" in text
    tokens = make_plan(*parse(A5000_X2, [model()])).models[0].kv_tokens(
        A5000_X2["memory_mib"] / 1024)
    assert f"max_model_len {tokens} or less" in text
    assert "kv_cache_dtype fp8" in text


def test_a_model_larger_than_every_gpu_together():
    plan = plan_from_settings(A5000_X2, [model(quantization="none", parameters_b=70.6,
                                               embedding_parameters_b=2.1, layers=80,
                                               architecture=None, attention_heads=64,
                                               kv_heads=8, head_dim=128,
                                               tensor_parallel_size=2)])
    text = texts(plan)
    assert "more than all 2 GPU(s) can give together (45.6 GiB at 0.95 of each)" in text
    assert "use a quantised variant (AWQ/GPTQ int4 weights are about" in text


def test_an_on_demand_model_that_cannot_load_beside_the_always_on_ones():
    models = [model(name="big", tensor_parallel_size=2, gpu_memory_utilization=0.7,
                    max_model_len=32768),
              model(name="extra", architecture="qwen2.5-14b", tensor_parallel_size=2,
                    gpu_memory_utilization=0.33, max_model_len=16384, mode="on-demand")]
    text = texts(plan_from_settings(A5000_X2, models))
    assert ("model 'extra' (on-demand, tensor_parallel_size 2) cannot share GPU 0, 1 with "
            "'big' at 0.7") in text
    # 0.70 + 0.33 of each 24 GiB GPU is 0.08 over 0.95: 1.9 GiB.
    assert "short by 1.9 GiB per GPU" in text


def test_a_measured_checkpoint_size_wins_over_the_estimate():
    plan = plan_from_settings(A5000_X2, [model(weights_gib=17.0)])
    assert plan.models[0].weights_gib == 17.0


@pytest.mark.parametrize(("changes", "field", "words"), [
    ({"tensor_parallel_size": 0}, "models[0].tensor_parallel_size", "whole number"),
    ({"gpu_memory_utilization": 1.2}, "models[0].gpu_memory_utilization", "at most 1"),
    ({"mode": "sometimes"}, "models[0].mode", "always-on, on-demand"),
    ({"quantization": "int3"}, "models[0].quantization", "must match the checkpoint"),
    ({"architecture": "llama-9000"}, "models[0].architecture", "unknown architecture"),
    ({"architecture": None}, "models[0].layers", "config.json"),
    ({"max_model_len": "long"}, "models[0].max_model_len", "number of tokens"),
    ({"colour": "blue"}, "models[0].colour", "no such model setting"),
    ({"name": ".."}, "models[0].name", "not a model name"),
    ({"name": "a/b"}, "models[0].name", "not a model name"),
])
def test_bad_model_settings_name_the_field(changes, field, words):
    with pytest.raises(PlanInputError) as caught:
        parse(A5000_X2, [model(**changes)])
    assert any(f == field and words in t for f, t in caught.value.problems), \
        caught.value.problems


def test_bad_gpus_and_duplicate_names():
    with pytest.raises(PlanInputError) as caught:
        parse({"count": 2, "memory_mib": "24GB"}, [model(), model()])
    fields = [f for f, _ in caught.value.problems]
    assert "gpus.memory_mib" in fields and "models" in fields


def run_cli(*args):
    # An inventory's or the defaults' plan is the deploy's command; a serving.json's and
    # the seed's the runtime's (autocode-plan).
    deploy_side = args[0] in ("--defaults", "--inventory")
    module = "infra.plan_cli" if deploy_side else "autocode.serving.plan_cli"
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_autocode_plan_prints_the_seed_refused_and_the_defaults_fitting(tmp_path):
    seed = run_cli("--seed")
    assert seed.returncode == 1 and "REFUSED: 5 problem(s)" in seed.stdout
    defaults = run_cli("--defaults")
    assert defaults.returncode == 0 and defaults.stdout.rstrip().endswith("fits")
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(
        "data: {worker_network: 10.0.1.0/24}\n"
        "orchestrator: {name: orch, address: 10.0.0.10, worker_address: 10.0.1.1,\n"
        "  data: {serving_gpus: {count: 1, memory_mib: 81559}}}\n"
        "workers: [{name: w1, address: 10.0.1.11}]\n")
    one_gpu = run_cli("--inventory", str(inventory))
    assert one_gpu.returncode == 1, one_gpu.stderr
    assert "orchestrator 'orch'" in one_gpu.stdout
    assert "GPUs: 1 x 81559 MiB" in one_gpu.stdout


def test_autocode_plan_reads_a_serving_json_as_the_host_has_it(tmp_path):
    import json
    path = tmp_path / "serving.json"
    path.write_text(json.dumps({"engine": "gpu", "port": 8000, "gpus": A5000_X2,
                                "models": [{**m, "path": f"/w/{m['name']}"}
                                           for m in DEFAULT_MODELS]}))
    out = run_cli("--config", str(path))
    assert out.returncode == 0 and "deepseek-r1-14b     on-demand  0,1" in out.stdout
    path.write_text("{not json")
    assert run_cli("--config", str(path)).returncode == 2
    path.write_text(json.dumps({"gpus": A5000_X2, "models": [{"name": "x"}]}))
    bad = run_cli("--config", str(path))
    assert bad.returncode == 2 and "models[0].model" in bad.stderr
