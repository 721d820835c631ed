"""The worker component: worker.yaml built from inventory and group data and checked by
the runtime's own parser before any host is contacted; the agent CLIs' settings; the unit.

The unit and the checks on a host run for real in tests/lab/test_agents.py."""

from __future__ import annotations

import configparser
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autocode.config import parse_worker_config
from infra.inventory_file import group_defaults
from infra.render import TEMPLATES, render
from infra.settings import HostSettings
from roles import CATALOGUE as components
from settings.agent_clis import AgentClis
from tasks import worker

VERSIONS = TEMPLATES / "agent_clis" / "versions.py"


def worker_data(**changes):
    return {**group_defaults("workers"), "orchestrator_address": "10.0.1.1",
            "ssh_hostname": "10.0.1.11", "worker_network": "10.0.1.0/24", **changes}


def problems_of(**changes) -> str:
    return "\n".join(components.check_host("worker1", "worker", worker_data(**changes)))


def test_worker_yaml_is_what_the_runtime_reads_with_every_inventory_value():
    data = worker_data(agent_type="aider", daily_budget_usd=12.5, project_id="acme",
                       model_endpoint="https://llm.example/v1", model_name="m1",
                       agent_limits={**group_defaults("workers")["agent_limits"],
                                     "task_timeout_s": 900})
    text = worker.render_config(HostSettings(data), "worker2")
    assert text.startswith("# Managed by autocode")
    raw = yaml.safe_load(text)
    config = parse_worker_config(raw, on_host=False)
    assert (config.worker_id, config.agent_type, config.project_id) == ("worker2", "aider",
                                                                        "acme")
    assert str(config.daily_budget_usd) == "12.5" and raw["daily_budget_usd"] == "12.5"
    assert config.task_timeout_s == 900 and config.max_turns == 50
    assert config.model_endpoint == "https://llm.example/v1" and config.model_name == "m1"
    # By default it claims from autocode-control, its agent under an account of its own.
    assert config.orchestrator_url == "https://10.0.1.1:7444"
    assert (raw["control_cert"], raw["control_key"], raw["control_ca"]) == (
        "/etc/autocode/control-client/worker.crt", "/etc/autocode/control-client/worker.key",
        "/usr/local/share/ca-certificates/autocode-platform/autocode-platform-ca.crt")
    assert config.claims_from_orchestrator and config.agent_user == "autocode-agent"
    inbox = parse_worker_config(yaml.safe_load(worker.render_config(HostSettings(
        {**data, "task_source": "inbox", "control_worker_port": 7500}), "worker2")),
        on_host=False)
    assert inbox.orchestrator_url == "http://10.0.1.1" and inbox.agent_user is None
    assert not inbox.claims_from_orchestrator
    # Vault's address is the agents' (vault.env, read by SecretManager), not the runtime's.
    assert "vault_addr" not in raw and "vault_cacert" not in raw
    assert config.agent_binaries == {"aider": "/opt/autocode/agent-clis/aider/bin/aider"}


def test_defaults_point_agents_at_the_orchestrators_model_api():
    raw = yaml.safe_load(worker.render_config(HostSettings(worker_data()), "worker1"))
    assert raw["model_endpoint"] == "http://10.0.1.1:8000/v1"
    assert raw["agent_binaries"] == {"claude-code": "/opt/autocode/agent-clis/npm/bin/claude"}
    assert problems_of() == ""


def test_all_clis_option_puts_every_binary_in_the_config():
    raw = yaml.safe_load(worker.render_config(HostSettings(worker_data(agent_clis_all=True)), "w"))
    assert sorted(raw["agent_binaries"]) == ["aider", "claude-code", "cursor-cli", "qwen-coder"]
    assert raw["agent_binaries"]["cursor-cli"] == "/var/lib/autocode/.local/bin/cursor-agent"


def test_bad_limits_and_endpoints_are_named_by_their_inventory_field():
    limits = {**group_defaults("workers")["agent_limits"], "task_timeout_s": -5,
              "max_turns": 2.5}
    text = problems_of(agent_limits=limits, model_endpoint="ftp://x", orchestrator_url="nope")
    assert "worker 'worker1': agent_limits.task_timeout_s: -5 is not valid" in text
    assert "agent_limits.max_turns: 2.5 is not valid; use an integer > 0" in text
    assert "model_endpoint: 'ftp://x' is not an http(s) URL" in text
    assert "orchestrator_url: 'nope' is not a http or https URL" in text


def test_unknown_limit_and_wrong_shapes_are_refused_with_the_fix():
    text = problems_of(agent_limits={"task_timeout": 5}, model_name=7,
                       model_api_key_file="key.txt")
    assert "agent_limits.task_timeout: no such limit; use task_timeout_s" in text
    assert "model_name: 7 must be a string" in text
    assert "model_api_key_file: 'key.txt' must be an absolute path on the worker" in text
    assert "agent_limits: must map" in problems_of(agent_limits=[1])


def test_a_value_two_components_check_is_reported_once():
    text = problems_of(daily_budget_usd=float("nan"))
    assert len([line for line in text.splitlines() if "daily_budget_usd" in line]) == 1


def test_agent_cli_settings_are_checked_before_any_host():
    text = problems_of(node_source="apt", node_version="18.19.0", npm_version="latest",
                       agent_cli_versions={"aider": "", "claude-code": "2.1.332",
                                           "qwen-coder": "0.24.4", "cursor-cli": "x",
                                           "codex": "1.0"},
                       cursor_install_url="http://cursor.com/install",
                       nodesource_key_fingerprint="abc")
    for expected in ("node_source: 'apt' is not a source of Node",
                     "node_version: the agent CLIs need Node 22",
                     "npm_version: 'latest' is not a version",
                     "agent_cli_versions.aider: '' is not a version",
                     "agent_cli_versions.cursor-cli: 'x' is not a version",
                     "agent_cli_versions.codex: no such agent type",
                     "cursor_install_url: 'http://cursor.com/install' is not an https URL",
                     "nodesource_key_fingerprint: 'abc' is not a 40-digit"):
        assert expected in text, expected


def test_pins_follow_what_the_worker_installs():
    def pins(data):
        return AgentClis.from_data(data).pins(data["agent_type"])

    def node_bin_dir(data):
        return AgentClis.from_data(data).node_bin_dir(data["install_dir"])

    assert pins(worker_data(agent_type="aider")) == {"aider": "0.86.2"}
    npm = worker_data(agent_type="qwen-coder", node_source="npm-registry")
    assert pins(npm) == {"qwen-coder": "0.24.4", "node": "22.23.5", "npm": "10.9.9"}
    assert node_bin_dir(npm) == "/opt/autocode/node/bin"
    assert node_bin_dir(worker_data()) == "/usr/bin"


def worker_unit(claims: bool) -> tuple[str, configparser.SectionProxy]:
    unit = render("worker/autocode-worker.service.j2", user="autocode",
                  venv="/opt/autocode/venv", config="/etc/autocode/worker.yaml",
                  install_dir="/opt/autocode", data_root="/mnt/data/autocode",
                  home="/var/lib/autocode", orchestrator_url="http://10.0.1.1",
                  path="/opt/autocode/agent-clis/npm/bin:/usr/bin:/bin",
                  env_files=("/etc/autocode/proxy-ca.env", "/etc/autocode/vault.env"),
                  claims=claims, agent_home="/var/lib/autocode-agent")
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(unit.replace("EnvironmentFile=-/etc/autocode/vault.env\n", ""))
    return unit, parser


def test_a_claiming_worker_holds_only_what_it_needs_to_run_its_agent_as_another_account():
    _, parser = worker_unit(claims=True)
    service = parser["Service"]
    caps = "CAP_SETUID CAP_SETGID CAP_CHOWN CAP_DAC_READ_SEARCH CAP_KILL"
    assert service["CapabilityBoundingSet"] == caps and service["AmbientCapabilities"] == caps
    assert service["NoNewPrivileges"] == "yes"
    assert service["ReadWritePaths"] == \
        "/mnt/data/autocode /var/lib/autocode /var/lib/autocode-agent"


def test_the_unit_is_the_seeds_and_hardened():
    unit, parser = worker_unit(claims=False)
    service = parser["Service"]
    assert parser["Unit"]["After"] == "network-online.target"
    assert parser["Unit"]["Wants"] == "network-online.target"
    assert service["Type"] == "simple" and service["User"] == "autocode"
    assert service["WorkingDirectory"].startswith("/opt/autocode")
    assert service["ExecStart"] == ("/opt/autocode/venv/bin/autocode-worker serve --config "
                                    "/etc/autocode/worker.yaml")
    assert (service["Restart"], service["RestartSec"]) == ("always", "10")
    assert "Environment=ORCHESTRATOR_URL=http://10.0.1.1" in unit
    assert parser["Install"]["WantedBy"] == "multi-user.target"
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    assert service["ReadWritePaths"] == "/mnt/data/autocode /var/lib/autocode"
    assert service["CapabilityBoundingSet"] == ""


def run_versions(spec: dict) -> dict:
    out = subprocess.run([sys.executable, str(VERSIONS), json.dumps(spec)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def test_version_fact_reads_metadata_and_requires_an_executable_program(tmp_path: Path):
    package = tmp_path / "lib/node_modules/@qwen-code/qwen-code"
    package.mkdir(parents=True)
    (package / "package.json").write_text(json.dumps({"version": "0.24.4"}))
    program = package / "cli-entry.js"
    program.write_text("#!/usr/bin/env node\n")
    site = tmp_path / "venv/lib/python3.11/site-packages"
    (site / "aider_chat-0.86.2.dist-info").mkdir(parents=True)
    aider = tmp_path / "venv/bin/aider"
    aider.parent.mkdir(parents=True)
    aider.write_text("#!/bin/sh\n")
    aider.chmod(0o755)
    versions_dir = tmp_path / "share/cursor-agent/versions/2026.02.13-41ac335"
    versions_dir.mkdir(parents=True)
    (versions_dir / "cursor-agent").write_text("#!/bin/sh\n")
    (versions_dir / "cursor-agent").chmod(0o755)
    (tmp_path / "cursor-agent").symlink_to(versions_dir / "cursor-agent")
    spec = {"qwen": ["package-json", str(package / "package.json"), str(program)],
            "aider": ["python-dist", str(tmp_path / "venv/lib/python3*/site-packages"),
                      "aider_chat", str(aider)],
            "cursor": ["version-folder", str(tmp_path / "cursor-agent")],
            "missing": ["package-json", str(tmp_path / "nope.json"), str(program)],
            "bash": ["deb", "bash"], "no-deb": ["deb", "autocode-no-such-package"]}
    got = run_versions(spec)
    # Not executable yet: a package whose program cannot run is not installed.
    assert got["qwen"] is None
    assert got["aider"] == "0.86.2" and got["cursor"] == "2026.02.13-41ac335"
    assert got["missing"] is None and got["no-deb"] is None and got["bash"]
    program.chmod(0o755)
    assert run_versions(spec)["qwen"] == "0.24.4"


def test_the_temporary_areas_rule_removes_exactly_what_is_old(tmp_path):
    """The worker's tmpfiles rule, rendered for two planted folders and applied by the
    real systemd-tmpfiles: old files go, in subfolders too; fresh ones and the folders
    holding them stay."""
    import os
    import shutil
    import time

    from tasks.worker import tmpfiles_rules

    if not shutil.which("systemd-tmpfiles"):
        pytest.skip("systemd-tmpfiles is not installed")
    tmp, var_tmp = tmp_path / "tmp", tmp_path / "var-tmp"
    private = tmp / "agent-scratch" / "build"
    old = time.time() - 8 * 86400
    planted = {tmp / "old.txt": old, tmp / "fresh.txt": None, private / "agent-old": old,
               private / "agent-fresh": None, var_tmp / "build" / "old.o": old,
               var_tmp / "fresh.o": None}
    for path, when in planted.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
        if when:
            os.utime(path, (when, when))
    rules = tmp_path / "autocode-worker.conf"
    rules.write_text(tmpfiles_rules(7, str(tmp), str(var_tmp)))
    done = subprocess.run(["systemd-tmpfiles", "--clean", str(rules)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    left = {p for p in planted if p.exists()}
    assert left == {tmp / "fresh.txt", private / "agent-fresh", var_tmp / "fresh.o"}
    assert private.is_dir()


def test_bad_tmp_cleanup_days_are_refused_naming_the_field():
    for bad in (0, -3, "7", 1.5, True):
        assert "tmp_cleanup_days: " in problems_of(tmp_cleanup_days=bad), bad
    assert "tmp_cleanup_days" not in problems_of(tmp_cleanup_days=30)
