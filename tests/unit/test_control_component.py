"""The task service's component: control.yaml as the service's own parser reads it, the
endpoint file as `autocode task` reads it, the token kept 0600 on the control machine, the
settings' checks, and the unit as systemd reads it.

The service deployed and used from the control machine runs in tests/lab/test_control.py."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from autocode.control.cli import Endpoint
from autocode.control.config import parse_config
from infra.control import OperatorToken, TokenFile, _keep_token
from infra.inventory_file import group_defaults
from infra.render import render
from infra.settings import HostSettings
from roles import CATALOGUE as components
from tasks import control

WORKERS = {"worker1": {"address": "10.0.1.11", "agent_type": "aider",
                       "daily_budget_usd": "12.5"}}


def orch_data(**changes):
    return {**group_defaults("orchestrator"), "ssh_hostname": "192.0.2.10",
            "orchestrator_address": "10.0.1.1", "worker_address": "10.0.1.1",
            "worker_network": "10.0.1.0/24", **changes}


def test_control_yaml_is_what_the_service_reads():
    data = orch_data(control_operator_port=8443, control_default_budget_usd=2.5,
                     control_lease_s=90)
    text = control.control_yaml(HostSettings(data), WORKERS, ["192.0.2.0/24"])
    assert text.startswith("# Managed by autocode")
    config = parse_config(yaml.safe_load(text))
    assert (config.operator_port, config.worker_port, config.lease_s) == (8443, 7444, 90)
    assert str(config.default_budget_usd) == "2.5"
    assert config.management_networks == ("192.0.2.0/24",)
    assert config.worker_at("10.0.1.11") == "worker1"
    assert str(config.workers["worker1"].daily_budget_usd) == "12.5"
    assert str(config.database) == f"{data['data_root']}/control/tasks.sqlite3"


def test_bad_values_are_named_before_any_host_is_touched():
    def problems(**changes) -> str:
        return "\n".join(components.check_host("orch", "orchestrator", orch_data(**changes)))

    assert "control_lease_s" in problems(control_lease_s=2)
    assert "control_default_budget_usd" in problems(control_default_budget_usd=0)
    assert "control_default_budget_usd" in problems(control_default_budget_usd=float("nan"))
    clash = problems(control_worker_port=7443)
    assert "control_worker_port" in clash and "must differ" in clash
    unknown = problems(control_lease_z=60)
    assert "control_lease_z: no component has this setting; did you mean" in unknown
    assert "control_lease_s" in unknown


def test_the_endpoint_file_is_what_autocode_task_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(control.Control, "endpoint_file",
                        staticmethod(lambda: tmp_path / "autocode-control.json"))
    monkeypatch.setattr(control.Control, "token_file",
                        lambda self: tmp_path / "site.control-token.json")
    data = orch_data(ssh_user="root", ssh_key="/keys/id_ed25519", ssh_port=2222,
                     ssh_known_hosts_file="/keys/known hosts")
    doc = control.endpoint(HostSettings(data), data)
    (tmp_path / "autocode-control.json").write_text(json.dumps({**doc, "ca_cert": "ca.crt"}))
    TokenFile(tmp_path / "site.control-token.json").save({"operator_token": "t0ken"})
    endpoint = Endpoint(tmp_path / "autocode-control.json")
    assert endpoint.url == "https://192.0.2.10:7443"
    assert endpoint.token() == "t0ken" and endpoint.ca_cert == tmp_path / "ca.crt"
    assert endpoint.remote("app") == \
        f"ssh://root@192.0.2.10:2222{group_defaults('orchestrator')['data_root']}" \
        "/control/repos/app.git"
    # The SSH command as a shell reads it (git runs it through sh): the path with a space
    # stays one argument.
    assert "'UserKnownHostsFile=/keys/known hosts'" in endpoint.git_ssh_command
    assert endpoint.receive_pack == "runuser -u autocode-control -- git-receive-pack"


def test_the_token_is_made_once_and_kept_0600(tmp_path):
    path = tmp_path / "site.control-token.json"
    token = OperatorToken(TokenFile(path))
    made = token.value()
    assert len(made) >= 40 and token.value() == made
    _keep_token(None, _Host(), token)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert OperatorToken(TokenFile(path)).value() == made  # the next run keeps it
    assert OperatorToken(TokenFile(path)).sha256() == token.sha256()
    assert made not in repr(token)
    other = OperatorToken(TokenFile(path))
    other._value = "another"
    with pytest.raises(Exception, match="another token"):
        _keep_token(None, _Host(), other)
    path.chmod(0o644)
    with pytest.raises(Exception, match="chmod 600"):
        OperatorToken(TokenFile(path)).value()


class _Host:
    name = "orch"

    def log(self, text: str) -> None:
        pass


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_the_unit_is_valid_for_systemd(tmp_path):
    unit = tmp_path / "autocode-control.service"
    unit.write_text(render("control/autocode-control.service.j2", user="root",
                           venv="/usr", config="/etc/autocode/control.yaml",
                           state_dir="/var/lib/autocode/control", groups="root"))
    check = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                           text=True)
    problems = [line for line in check.stderr.splitlines()
                if "autocode-control" in line and "Command" not in line]
    assert not problems, check.stderr
