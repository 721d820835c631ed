"""The worker agent: /etc/autocode/worker.yaml and the seed's autocode-worker.service.

worker.yaml is built here as data from the inventory and group data, and checked with the
runtime's own parser twice: on the control machine before any host is contacted (every
value whose validity does not depend on the host), and on the worker by `autocode-worker
check` on the new file before it replaces the old one. A bad value therefore fails the
deploy with the field named, and the running service keeps the last good config.

With `worker_runner: systemd` the unit runs the agent; with `nomad` the Nomad job does
(tasks/nomad.py) and the unit is stopped and disabled, so one inbox never has two readers.
"""

from __future__ import annotations

import yaml
from pyinfra import host
from pyinfra.api import deploy

from autocode.config import ConfigError, parse_worker_config
from infra.component import Component
from infra.facts import q
from infra.operations import checked_config, digest, file_content, systemd_unit, unit_removed
from infra.render import render
from infra.validation import Problems, check_calendar
from tasks import agent_clis, platform_ca, runtime

UNIT = "autocode-worker.service"
CONFIG_NAME = "worker.yaml"
# worker.yaml settings -> the inventory field that sets each (for error messages).
LIMITS = ("task_timeout_s", "kill_grace_s", "max_turns", "max_output_mb", "poll_interval_s")
FIELDS = {"worker_id": "name", "project_id": "project_id", "agent_type": "agent_type",
          "daily_budget_usd": "daily_budget_usd", "data_root": "data_root",
          "timezone": "timezone", "orchestrator_url": "orchestrator_url",
          "model_endpoint": "model_endpoint", "model_name": "model_name",
          "model_api_key_file": "model_api_key_file",
          "cleanup_after_days": "task_cleanup_days",
          **{limit: f"agent_limits.{limit}" for limit in LIMITS}}
CLEANUP_UNITS = ("autocode-worker-cleanup.service", "autocode-worker-cleanup.timer")
TMPFILES = "/etc/tmpfiles.d/autocode-worker.conf"


def tmpfiles_rules(days: int, tmp: str = "/tmp", var_tmp: str = "/var/tmp") -> str:
    return render("worker/autocode-tmpfiles.conf.j2", days=days, tmp=tmp, var_tmp=var_tmp)

# Checked by the components that own them (runtime, base, agent_clis, vault), once.
CHECKED_ELSEWHERE = {"project_id", "agent_type", "daily_budget_usd", "timezone", "data_root",
                     "agent_binaries", "vault_addr", "vault_cacert"}


def config_path(data) -> str:
    return f"{data['config_dir']}/{CONFIG_NAME}"


def orchestrator_url(data) -> str:
    return data.get("orchestrator_url") or f"http://{data['orchestrator_address']}"


def worker_settings(name: str, data) -> dict:
    """worker.yaml for the worker `name` with merged host data `data`."""
    limits = data.get("agent_limits")
    settings = {
        "worker_id": name,
        "project_id": data.get("project_id"),
        "agent_type": data.get("agent_type"),
        # A string: the runtime reads it as an exact Decimal, never through a float.
        "daily_budget_usd": str(data.get("daily_budget_usd")),
        "data_root": data.get("data_root"),
        "timezone": data.get("timezone"),
        "orchestrator_url": orchestrator_url(data),
        "model_endpoint": data.get("model_endpoint") or
        f"http://{data['orchestrator_address']}:{data.get('model_api_port', 8000)}/v1",
        "model_name": data.get("model_name"),
        **(limits if isinstance(limits, dict) else {}),
        "cleanup_after_days": data.get("task_cleanup_days"),
        "agent_binaries": agent_clis.installed_binaries(data),
    }
    if data.get("model_api_key_file"):
        settings["model_api_key_file"] = data["model_api_key_file"]
    if data.get("vault_port"):
        settings["vault_addr"] = f"https://{data['orchestrator_address']}:{data['vault_port']}"
        settings["vault_cacert"] = platform_ca.TRUSTED_CA
    return settings


def render_config(name: str, data) -> str:
    header = f"# Managed by autocode (tasks/worker.py) for {name}; see autocode/config.py.\n"
    return header + yaml.safe_dump(worker_settings(name, data), sort_keys=False)


def check(problems: Problems, role: str, data) -> None:
    if role != "worker":
        return
    limits = data.get("agent_limits")
    if not isinstance(limits, dict):
        problems.add("agent_limits", f"must map limits to numbers, e.g. {{task_timeout_s: "
                     f"3600}}; the limits are {', '.join(LIMITS)}")
    else:
        for name in sorted(set(limits) - set(LIMITS)):
            problems.add(f"agent_limits.{name}", f"no such limit; use {', '.join(LIMITS)}")
    for field in ("model_name", "orchestrator_url", "model_endpoint", "model_api_key_file"):
        value = data.get(field)
        if value is not None and not isinstance(value, str):
            problems.add(field, f"{value!r} must be a string")
    check_calendar(problems, "task_cleanup_calendar", data.get("task_cleanup_calendar"),
                   "*-*-* 04:20:00")
    days = data.get("tmp_cleanup_days")
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        problems.add("tmp_cleanup_days", f"{days!r} is not a whole number of days >= 1; "
                     "e.g. 7")
    key_file = data.get("model_api_key_file")
    if isinstance(key_file, str) and key_file and not key_file.startswith("/"):
        problems.add("model_api_key_file", f"{key_file!r} must be an absolute path on the worker")
    if not isinstance(limits, dict) or problems.items:
        return
    # The runtime's own parser on the very file the host will get; what depends on the
    # host (folders, files) is checked there, by `autocode-worker check`.
    try:
        parse_worker_config(worker_settings(problems.name, {"orchestrator_address":
                                                            "127.0.0.1", **data}),
                            on_host=False)
    except ConfigError as exc:
        for setting, text in exc.problems:
            if setting.split(".")[0] not in CHECKED_ELSEWHERE:
                problems.add(FIELDS.get(setting, setting), text)


COMPONENT = Component(
    name="worker",
    role_settings={"worker": {
        # http(s) base URL of the model API agents use; empty: the orchestrator's model
        # server at http://<orchestrator_address>:<model_api_port>/v1.
        "model_endpoint": "",
        "model_name": "qwen-2.5-coder-32b",
        # A file on the worker holding the model API's key, if it needs one.
        "model_api_key_file": "",
        # Empty: http://<orchestrator_address>.
        "orchestrator_url": "",
        "agent_limits": {"task_timeout_s": 3600, "kill_grace_s": 10, "max_turns": 50,
                         "max_output_mb": 16, "poll_interval_s": 5},
        # Finished tasks' work trees and run logs go this many days after their result
        # (`autocode-worker cleanup`, daily); results and task files stay.
        "task_cleanup_days": 14,
        "task_cleanup_calendar": "*-*-* 04:20:00",
        # /tmp and /var/tmp: what nobody has touched for this many days goes, by
        # systemd-tmpfiles' daily clean (a running service's private /tmp is systemd's).
        "tmp_cleanup_days": 7,
    }},
    check=check,
    runtime_extras={"worker": ()},
)


@deploy("Worker agent")
def worker() -> None:
    data = host.data.dict()
    if data["worker_runner"] != "systemd":
        unit_removed(name=f"{UNIT} (Nomad runs the agent)", unit=UNIT)
    venv = runtime.venv_path()
    path = config_path(data)
    text = render_config(host.name, data)
    user = data["service_user"]
    check_command = f"runuser -u {q(user)} -- {q(venv)}/bin/autocode-worker check --config {{}}"
    config_op = checked_config(name=f"Config {path}", path=path, text=text, user="root",
                               group=user, mode="640", check_command=check_command)
    cleanup = f"{venv}/bin/autocode-worker cleanup --config {path}"
    systemd_unit(name="Unit autocode-worker-cleanup.service",
                 unit="autocode-worker-cleanup.service", running=False, enabled=False,
                 batch=CLEANUP_UNITS,
                 text=render("worker/autocode-worker-cleanup.service.j2", command=cleanup,
                             user=user, data_root=data["data_root"]))
    systemd_unit(name="Unit autocode-worker-cleanup.timer", unit="autocode-worker-cleanup.timer",
                 batch=CLEANUP_UNITS,
                 text=render("worker/autocode-worker-cleanup.timer.j2",
                             calendar=data["task_cleanup_calendar"]))
    file_content(name=f"Temporary areas' cleanup {TMPFILES}", path=TMPFILES,
                 text=tmpfiles_rules(data["tmp_cleanup_days"]), mode="644")
    if data["worker_runner"] != "systemd":
        return
    from tasks.mitmproxy import AGENT_ENV
    from tasks.vault import WORKER_ENV
    inputs = {CONFIG_NAME: digest(text), "runtime": runtime.install_digest() or "",
              "agent CLIs": digest(repr(sorted(agent_clis.pins(data).items())))}
    systemd_unit(
        name=f"Unit {UNIT}", unit=UNIT,
        text=render("worker/autocode-worker.service.j2", user=user, venv=venv, config=path,
                    install_dir=data["install_dir"], data_root=data["data_root"],
                    home=data["service_home"], orchestrator_url=orchestrator_url(data),
                    path=f"{agent_clis.npm_prefix(data)}/bin:{agent_clis.node_bin_dir(data)}:"
                         "/usr/local/bin:/usr/bin:/bin",
                    env_files=(AGENT_ENV, WORKER_ENV)),
        inputs=inputs, restart_when=(config_op,), settle_s=3,
        check_command=check_command.format(q(path)))


def orchestrator() -> None:
    return None

