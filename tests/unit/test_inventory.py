"""The inventory file: each kind of bad input gets one clear error before any connection."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra.errors import InventoryError
from infra.inventory_file import load
from roles import CATALOGUE

REPO = Path(__file__).resolve().parents[2]
CERT = """-----BEGIN CERTIFICATE-----
MIIBszCCAVmgAwIBAgIUYWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXowCgYIKoZI
-----END CERTIFICATE-----
"""


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "id_ed25519"
    path.write_text("not a real key; only its existence is checked\n")
    return path


def good(key: Path) -> dict:
    return {
        "ssh": {"user": "root", "key": str(key)},
        "data": {"worker_network": "10.99.1.0/24"},
        "orchestrator": {"name": "orchestrator", "address": "10.99.0.10",
                         "worker_address": "10.99.1.1"},
        "workers": [
            {"name": "worker1", "address": "10.99.1.11", "agent_type": "aider",
             "daily_budget_usd": 10},
            {"name": "worker2", "address": "10.99.1.12", "agent_type": "claude-code"},
        ],
    }


def load_doc(tmp_path: Path, doc) -> dict:
    path = tmp_path / "inventory.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return load(CATALOGUE, path)


def problems(tmp_path: Path, doc) -> str:
    with pytest.raises(InventoryError) as exc:
        load_doc(tmp_path, doc)
    return exc.value.render()


def test_good_inventory_builds_groups_with_host_data(tmp_path, key):
    groups = load_doc(tmp_path, good(key))
    assert [name for name, _ in groups["orchestrator"]] == ["orchestrator"]
    assert [name for name, _ in groups["workers"]] == ["worker1", "worker2"]
    w1 = dict(groups["workers"])["worker1"]
    assert w1["ssh_hostname"] == "10.99.1.11"
    assert w1["ssh_key"] == str(key)
    assert w1["agent_type"] == "aider"
    assert w1["daily_budget_usd"] == 10
    assert w1["orchestrator_address"] == "10.99.1.1"
    # Worker 2 takes the group default for the budget: not set in host data.
    assert "daily_budget_usd" not in dict(groups["workers"])["worker2"]


def test_missing_file_says_both_ways_to_get_one(tmp_path):
    with pytest.raises(InventoryError) as exc:
        load(CATALOGUE, tmp_path / "nope.yaml")
    msg = exc.value.render()
    assert "make lab" in msg and "python -m lab up" in msg
    assert "AUTOCODE_INVENTORY" in msg


def test_unknown_agent_type_lists_valid_ones(tmp_path, key):
    doc = good(key)
    doc["workers"][0]["agent_type"] = "copilot"
    msg = problems(tmp_path, doc)
    assert "worker 'worker1': agent_type: unknown agent type 'copilot'" in msg
    assert "aider, claude-code, cursor-cli, qwen-coder" in msg


@pytest.mark.parametrize("budget", [0, -5, "lots", True, float("nan"), float("inf"),
                                    float("-inf")])
def test_budget_must_be_positive_number(tmp_path, key, budget):
    doc = good(key)
    doc["workers"][1]["daily_budget_usd"] = budget
    msg = problems(tmp_path, doc)
    assert f"worker 'worker2': daily_budget_usd: {budget!r} is not a positive number" in msg
    assert "daily_budget_usd: 25" in msg  # the fix, by example


def test_zero_workers(tmp_path, key):
    doc = good(key)
    doc["workers"] = []
    assert "workers: no workers; list at least one worker host" in problems(tmp_path, doc)


def test_two_orchestrators(tmp_path, key):
    doc = good(key)
    doc["orchestrator"] = [doc["orchestrator"], {"name": "orch2", "address": "10.99.0.11"}]
    msg = problems(tmp_path, doc)
    assert "orchestrator: 2 hosts given; the platform has exactly one orchestrator" in msg


def test_duplicate_addresses(tmp_path, key):
    doc = good(key)
    doc["workers"][1]["address"] = "10.99.1.11"
    msg = problems(tmp_path, doc)
    assert "host 'worker2': address 10.99.1.11 is also 'worker1''s" in msg


def test_duplicate_names(tmp_path, key):
    doc = good(key)
    doc["workers"][1]["name"] = "worker1"
    assert "host 'worker1': name used twice" in problems(tmp_path, doc)


@pytest.mark.parametrize("port", [0, 70000, "http"])
def test_port_out_of_range(tmp_path, key, port):
    doc = good(key)
    doc["orchestrator"]["data"] = {"vault_port": port}
    msg = problems(tmp_path, doc)
    assert f"orchestrator 'orchestrator': vault_port: {port!r} is not a port" in msg
    assert "1 to 65535" in msg


def test_ssh_port_out_of_range(tmp_path, key):
    doc = good(key)
    doc["workers"][0]["ssh"] = {"port": 0}
    assert "worker 'worker1': ssh.port: 0 is not a port" in problems(tmp_path, doc)


def test_missing_ssh_key_file(tmp_path, key):
    doc = good(key)
    doc["ssh"]["key"] = str(tmp_path / "missing_key")
    msg = problems(tmp_path, doc)
    assert f"ssh.key: SSH key file {tmp_path / 'missing_key'} does not exist" in msg
    assert "ssh-keygen" in msg
    # One message per host: the orchestrator and both workers share the default.
    assert msg.count("does not exist") == 3


def test_extra_ca_cert_must_exist_and_be_pem(tmp_path, key):
    doc = good(key)
    not_pem = tmp_path / "corp.crt"
    not_pem.write_bytes(b"\x30\x82binary DER")
    doc["data"]["extra_ca_certs"] = [str(tmp_path / "absent.crt"), str(not_pem)]
    msg = problems(tmp_path, doc)
    assert "absent.crt does not exist" in msg
    assert "corp.crt is not a PEM certificate" in msg


def test_extra_ca_cert_good(tmp_path, key):
    cert = tmp_path / "corp.crt"
    cert.write_text(CERT)
    doc = good(key)
    doc["data"]["extra_ca_certs"] = [str(cert)]
    assert load_doc(tmp_path, doc)


def test_worker_outside_worker_network(tmp_path, key):
    doc = good(key)
    doc["workers"][0]["address"] = "10.99.7.11"
    assert "address 10.99.7.11 is outside worker_network 10.99.1.0/24" in problems(tmp_path, doc)


def test_worker_network_is_required(tmp_path, key):
    doc = good(key)
    del doc["data"]["worker_network"]
    msg = problems(tmp_path, doc)
    assert "worker 'worker1': worker_network: missing" in msg
    assert "worker_network: 10.0.1.0/24" in msg


def test_orchestrator_gateway_outside_worker_network(tmp_path, key):
    doc = good(key)
    doc["orchestrator"]["worker_address"] = "10.99.9.1"
    msg = problems(tmp_path, doc)
    assert "orchestrator 'orchestrator': worker_address 10.99.9.1 is outside" in msg


def test_unknown_fields_are_named(tmp_path, key):
    doc = good(key)
    doc["workers"][0]["budget"] = 5
    doc["wrokers"] = []
    msg = problems(tmp_path, doc)
    assert "workers[0].budget: unknown field" in msg
    assert "wrokers: unknown top-level field" in msg


def test_invalid_yaml(tmp_path):
    assert "not valid YAML" in problems(tmp_path, "workers: [\n")


def test_all_problems_reported_at_once(tmp_path, key):
    doc = good(key)
    doc["workers"][0]["agent_type"] = "nope"
    doc["workers"][1]["daily_budget_usd"] = -1
    msg = problems(tmp_path, doc)
    assert "agent_type" in msg and "daily_budget_usd" in msg


def test_pyinfra_exits_before_connecting(tmp_path, key):
    """The real CLI: a bad inventory stops pyinfra with our message and no connection."""
    doc = good(key)
    doc["workers"][0]["agent_type"] = "copilot"
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(doc))
    pyinfra = Path(sys.executable).with_name("pyinfra")
    proc = subprocess.run(
        [str(pyinfra), "inventory.py", "deploy.py", "-y"], cwd=REPO, capture_output=True,
        text=True, env={**os.environ, "AUTOCODE_INVENTORY": str(path)}, timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown agent type 'copilot'" in proc.stderr
    assert "No host was contacted" in proc.stderr
    assert "Connecting" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("spelling", [".nan", ".NaN", ".inf", "-.inf"])
def test_yaml_non_finite_budget_is_refused(tmp_path, key, spelling):
    """As a user types it: YAML's own spellings of NaN and infinity."""
    text = yaml.safe_dump(good(key)).replace("daily_budget_usd: 10",
                                             f"daily_budget_usd: {spelling}")
    assert spelling in text
    assert "worker 'worker1': daily_budget_usd:" in problems(tmp_path, text)


@pytest.mark.parametrize(("where", "field", "value"), [
    ("data", "project_id", "acme\n"),
    ("data", "data_root", "/mnt/data/autocode\n"),
    ("data", "install_dir", "/opt/autocode\n"),
])
def test_a_trailing_newline_is_not_a_valid_name_or_path(tmp_path, key, where, field, value):
    """`$` in a regular expression matches before a final newline; a name or path that
    ends in one would split a unit file or a log line."""
    doc = good(key)
    doc.setdefault(where, {})[field] = value
    assert f"{field}: " in problems(tmp_path, doc)


def test_a_host_name_with_a_trailing_newline_is_refused(tmp_path, key):
    doc = good(key)
    doc["workers"][0]["name"] = "worker1\n"
    assert "is not a valid host name" in problems(tmp_path, doc)
