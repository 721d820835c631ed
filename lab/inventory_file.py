"""The inventory the lab writes: the same format a user writes for their own VMs."""

from __future__ import annotations

from pathlib import Path

import yaml

from .config import LabConfig

# Agents the lab's four workers run. Not cursor-cli: its vendor's servers, the only source
# of its CLI, are unreachable from here (tests/lab/test_agents.py shows the deploy saying so).
LAB_AGENTS = ("claude-code", "aider", "qwen-coder", "claude-code")
# Debian 13's Python 3.13 is newer than any aider-chat release admits (Requires-Python
# <3.13): there the second worker runs Qwen Code instead.
LAB_AGENTS_BY_SUITE = {"trixie": ("claude-code", "qwen-coder", "qwen-coder", "claude-code")}
# The workers that claim their tasks from autocode-control (the default, task_source:
# orchestrator; tests/lab/test_control.py); the others keep their inboxes for the tests
# written for them (test_workers.py, test_metering.py) until those move to the front door.
CLAIMING_WORKERS = (3, 1)

# The lab's LLM API fixture on the internet host (lab/fixtures/llm_api.py), through the
# orchestrator's proxy like any outside API; by address, as the workers' resolver forwards
# to real DNS, where internet.lab is no name.
def model_endpoint(cfg: LabConfig) -> str:
    return f"https://{cfg.internet.uplink_addr}/v1"


def known_hosts_file(cfg: LabConfig) -> Path:
    return cfg.ssh_key.parent / "known_hosts"


def write_known_hosts(cfg: LabConfig) -> None:
    """We generated every host key ourselves, so strict checking costs nothing."""
    lines = []
    for m in cfg.machines:
        for pub in sorted((cfg.rootfs(m) / "etc/ssh").glob("ssh_host_*_key.pub")):
            keytype, key = pub.read_text().split()[:2]
            lines.append(f"{m.ssh_addr} {keytype} {key}")
    known_hosts_file(cfg).write_text("\n".join(lines) + "\n")


def render(cfg: LabConfig) -> dict:
    agents = LAB_AGENTS_BY_SUITE.get(cfg.suite, LAB_AGENTS)
    orch = cfg.orchestrator
    doc: dict = {
        "ssh": {
            "user": "root",
            "port": 22,
            "key": str(cfg.ssh_key),
            "known_hosts": str(known_hosts_file(cfg)),
        },
        "data": {
            "worker_network": cfg.worker_net,
            "worker_network6": cfg.worker_net6,
            "extra_ca_certs": [str(p) for p in cfg.extra_ca_certs],
            # The internet fixture's own test CA: trusted by the proxy alone.
            "proxy_upstream_ca_certs": [str(cfg.fixture_dir / "internet-ca.crt")],
            # Nomad's binaries are not reachable here: systemd runs the agents.
            "worker_runner": "systemd",
            # NodeSource's repository is not reachable here; the npm registry is.
            "node_source": "npm-registry",
            "model_endpoint": model_endpoint(cfg),
            # The fixture's two APIs are metered and capped like the real providers'.
            "llm_apis_extra": [
                {"host": cfg.internet.uplink_addr, "path": "/v1/messages",
                 "provider": "anthropic"},
                {"host": cfg.internet.uplink_addr, "path": "/v1/chat/completions",
                 "provider": "openai"}],
            # Elastic's builds are not reachable here either: no node, no Filebeat; the
            # logging tests point elasticsearch_mode: external at the Elasticsearch double
            # run on the orchestrator as a lab fixture (tests/lab/test_logging.py).
            "elasticsearch_mode": "none",
            # No GPUs here, and serving on CPU needs a 3.7 GB venv: not in the lab's deploy
            # (tests/unit/serving runs the CPU path for real).
            "model_serving": "disabled",
            "filebeat_enabled": False,
        },
        "orchestrator": {
            "name": orch.name,
            "address": orch.uplink_addr,
            "worker_address": orch.worker_addr,
        },
        "workers": [
            {
                "name": w.name,
                "address": w.worker_addr,
                "agent_type": agents[(n - 1) % len(agents)],
                "daily_budget_usd": 25,
                **({} if n in CLAIMING_WORKERS else {"data": {"task_source": "inbox"}}),
            }
            for n, w in ((n, cfg.worker(n)) for n in range(1, cfg.workers + 1))
        ],
        # Not deployed to: the stand-in for the outside world, used by the tests.
        "lab": {"internet": cfg.internet.uplink_addr, "internet6": cfg.internet.uplink_addr6},
    }
    return doc


def write(cfg: LabConfig) -> Path:
    header = "# Written by `python -m lab up`; the format is documented in README.md.\n"
    cfg.inventory_file.write_text(header + yaml.safe_dump(render(cfg), sort_keys=False))
    return cfg.inventory_file
