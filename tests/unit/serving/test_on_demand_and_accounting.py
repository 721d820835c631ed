"""The parts of the serving app that need no Ray: the on-demand gate and policy
(ondemand.py), the usage charge (accounting.py), and the Ray Serve arguments app.py builds.
The same code runs for real under Ray Serve in test_serving_cpu.py."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from decimal import Decimal

import pytest

from autocode.budget import BudgetLedger
from autocode.serving.accounting import Accounting, parse_rates
from autocode.serving.app import ingress_args, llm_config_args, load_config
from autocode.serving.ondemand import OnDemandGate, OnDemandPolicy
from tasks.serving import A5000_X2, DEFAULT_MODELS


@dataclass
class Context:
    """The fields of Ray Serve's AutoscalingContext the policy reads."""

    total_num_requests: float = 0
    current_num_replicas: int = 0
    current_time: float = 0.0
    policy_state: dict = field(default_factory=dict)


def step(policy: OnDemandPolicy, ctx: Context) -> int:
    desired, ctx.policy_state = policy(ctx)
    return desired


def test_the_policy_loads_on_demand_and_unloads_after_idle(tmp_path):
    policy = OnDemandPolicy(str(tmp_path), "coder-14b", idle_s=60)
    ctx = Context()
    assert step(policy, ctx) == 0
    assert (tmp_path / "replicas" / "coder-14b").read_text() == "0"
    ctx.total_num_requests, ctx.current_time = 1, 100.0
    assert step(policy, ctx) == 1
    ctx.current_num_replicas, ctx.total_num_requests, ctx.current_time = 1, 0, 130.0
    assert step(policy, ctx) == 1  # idle 30 s of 60
    assert (tmp_path / "replicas" / "coder-14b").read_text() == "1"
    ctx.current_time = 161.0
    assert step(policy, ctx) == 0


def test_the_policy_unloads_at_once_when_another_model_is_wanted(tmp_path):
    policy = OnDemandPolicy(str(tmp_path), "coder-14b", idle_s=900)
    ctx = Context(total_num_requests=2, current_num_replicas=1, current_time=10.0)
    (tmp_path / "wanted").write_text("r1-14b")
    assert step(policy, ctx) == 1  # busy: it finishes what it has
    ctx.total_num_requests, ctx.current_time = 0, 11.0
    assert step(policy, ctx) == 0  # idle for 1 s only, but the other waits
    (tmp_path / "wanted").write_text("coder-14b")
    assert step(policy, ctx) == 1
    # Not exclusive (the plan fits them together): the other's wish does not matter.
    free = OnDemandPolicy(str(tmp_path), "coder-14b", idle_s=900, exclusive=False)
    (tmp_path / "wanted").write_text("r1-14b")
    assert step(free, Context(current_num_replicas=1, current_time=5.0)) == 1


def test_the_gate_holds_a_second_model_until_the_first_is_idle_and_unloaded(tmp_path):
    async def scenario():
        stopping = {"a"}

        async def still_running(model):
            return model in stopping

        gate = OnDemandGate(tmp_path, {"a", "b"}, poll_s=0.01, still_running=still_running)
        (tmp_path / "replicas").mkdir()
        await gate.enter("a", 1)
        await gate.enter("a", 1)  # the same model: in at once
        await gate.enter("always-on", 0)  # not gated
        (tmp_path / "replicas" / "a").write_text("1")
        waiting = asyncio.create_task(gate.enter("b", 5))
        await asyncio.sleep(0.05)
        assert not waiting.done() and not (tmp_path / "wanted").exists()
        await gate.leave("a")
        await gate.leave("a")
        await asyncio.sleep(0.05)
        # a is idle: b is wanted, but a still holds its memory.
        assert (tmp_path / "wanted").read_text() == "b" and not waiting.done()
        (tmp_path / "replicas" / "a").write_text("0")
        await asyncio.sleep(0.05)
        assert not waiting.done()  # no running replica, but one is still stopping
        stopping.clear()
        await asyncio.wait_for(waiting, 1)
        assert gate.active == "b"
        # a now waits for b, and gives up after its bound.
        with pytest.raises(TimeoutError):
            await gate.enter("a", 0.1)
        await gate.leave("b")

    asyncio.run(scenario())


def test_rates_are_checked_and_name_the_entry():
    default, models = parse_rates({"default": {"input": "0.1"},
                                   "models": {"m": {"input": 1, "output": "2.5"}}})
    assert default.input == Decimal("0.1") and default.output == 0
    assert models["m"].output == Decimal("2.5")
    for bad, where in (({"default": {"input": -1}}, "internal_prices.default.input"),
                       ({"models": {"m": {"output": "x"}}}, "internal_prices.models.m.output"),
                       ({"models": {"m": {"inptu": 1}}}, "internal_prices.models.m")):
        with pytest.raises(ValueError, match=where.replace(".", r"\.")):
            parse_rates(bad)


def test_a_served_answer_is_charged_to_the_worker_by_its_address(tmp_path):
    ledger_path = tmp_path / "served.sqlite3"
    accounting = Accounting(ledger_path, {"10.0.0.12": "worker2"}, {"worker2": "aider"},
                            {"models": {"coder": {"input": "2", "output": "8"}}})
    answer = {"model": "/mnt/data/autocode/model-weights/coder", "choices": [
        {"message": {"content": "ok"}}], "usage": {"prompt_tokens": 1000,
                                                    "completion_tokens": 500}}
    tap = accounting.tap("coder", streaming=False)
    tap(json.dumps(answer).encode())
    accounting.charge("10.0.0.12", "coder", tap, 400)
    stream = accounting.tap("other", streaming=True)
    stream(b'data: {"choices":[{"delta":{"content":"abcdefgh"}}]}\n\n')  # cut: no usage
    accounting.charge("10.0.0.99", "other", stream, 400)
    accounting.charge("127.0.0.1", "coder", accounting.tap("coder", False), 40)
    accounting.close()
    ledger = BudgetLedger(ledger_path)
    rows = ledger.charges()
    ledger.close()
    assert [(r["worker_id"], r["agent"], r["detail"]["model"], r["amount_usd"],
             r["detail"]["estimated"]) for r in rows] == [
        ("worker2", "aider", "coder", "0.006", False),  # (1000 x 2 + 500 x 8) / 1e6
        ("unknown:10.0.0.99", "unknown", "other", "0", True),  # default rate 0
        ("orchestrator", "unknown", "coder", "0.00002", True)]  # 10 tokens estimated
    assert rows[1]["detail"]["output_tokens"] == 2  # 8 characters, 4 per token


def test_on_demand_models_that_do_not_fit_together_are_one_at_a_time():
    config = {"engine": "gpu", "gpus": A5000_X2, "state_dir": "/run/x",
              "on_demand_idle_s": 600,
              "models": [{**m, "path": f"/w/{m['name']}"} for m in DEFAULT_MODELS]}
    args = llm_config_args(config)
    always, coder, r1 = args
    assert always["deployment_config"]["autoscaling_config"]["min_replicas"] == 1
    policy = coder["deployment_config"]["autoscaling_config"]["policy"]
    assert policy["policy_function"] == "autocode.serving.ondemand:OnDemandPolicy"
    assert policy["policy_kwargs"] == {"state_dir": "/run/x", "model": "qwen-2.5-coder-14b",
                                       "idle_s": 600.0, "exclusive": True}
    # TP2: one bundle per rank, each the model's planned share of a GPU, on this node.
    assert always["placement_group_config"] == {
        "bundles": [{"GPU": 0.62, "CPU": 1}] * 2, "strategy": "STRICT_PACK"}
    assert r1["runtime_env"] == {"env_vars": {"VLLM_RAY_PER_WORKER_GPUS": "0.33"}}
    assert ingress_args(config)["on_demand"] == {
        "state_dir": "/run/x", "exclusive": ["qwen-2.5-coder-14b", "deepseek-r1-14b"]}
    # On two 80 GB GPUs, with shares that add up, the plan fits them all at once: no gate.
    shares = {"qwen-2.5-coder-32b": 0.5, "qwen-2.5-coder-14b": 0.2, "deepseek-r1-14b": 0.2}
    roomy = {**config, "gpus": {"count": 2, "memory_mib": 81559}, "models": [
        {**m, "gpu_memory_utilization": shares[m["name"]]} for m in config["models"]]}
    assert ingress_args(roomy)["on_demand"]["exclusive"] == []
    assert llm_config_args(roomy)[1]["deployment_config"]["autoscaling_config"][
        "policy"]["policy_kwargs"]["exclusive"] is False


@pytest.mark.parametrize("change, words", [
    ({"max_queued": 0}, "max_queued: 0 is not a positive whole number"),
    ({"accounting": {"workers": {}}}, "accounting: give ledger"),
    ({"accounting": {"ledger": "/l", "internal_prices": {"default": {"input": "-1"}}}},
     "accounting.internal_prices.default.input"),
])
def test_bad_serving_json_names_the_field(tmp_path, change, words):
    config = {"engine": "cpu", "port": 8000, "models": [{
        "name": "tiny", "model": "tiny", "path": "/w/tiny", "tensor_parallel_size": 1,
        "max_model_len": 1024, "parameters_b": 0.0003, "embedding_parameters_b": 0.0001,
        "layers": 2, "attention_heads": 2,
        "kv_heads": 1, "head_dim": 64}], **change}
    path = tmp_path / "serving.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=words.replace(".", r"\.")):
        load_config(path)
