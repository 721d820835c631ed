"""The worker component's settings (where the agents' model is, their limits, cleanup) and
worker.yaml, the worker runtime's configuration built from them as data (autocode/config.py
parses it, at plan time and on the worker)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field

from autocode.config import LIMITS as RUNTIME_LIMITS
from autocode.config import ConfigError, check_limit, check_url, parse_worker_config
from autocode.problems import Problems, calendar
from infra.settings import (
    Describe,
    For,
    HostSettings,
    SettingProblem,
    Settings,
    checked,
    choice,
)
from settings.agent_clis import AgentClis
from settings.base import Base
from settings.control import Control
from settings.inventory import Addresses
from settings.platform_ca import TRUSTED_CA
from settings.runtime import Runtime
from settings.serving import Serving

CONFIG_NAME = "worker.yaml"
UNIT = "autocode-worker.service"
# The limits an inventory sets in agent_limits (worker.yaml's own names).
LIMITS = ("task_timeout_s", "kill_grace_s", "max_turns", "max_output_mb", "poll_interval_s")
# Claiming from the orchestrator: the agent runs under an account of its own, so it can
# neither read the worker's client key nor act as the worker (docs/control.md).
AGENT_USER = "autocode-agent"
AGENT_HOME = "/var/lib/autocode-agent"
CONTROL_CLIENT_DIR = "/etc/autocode/control-client"
CONTROL_CERT = f"{CONTROL_CLIENT_DIR}/worker.crt"
CONTROL_KEY = f"{CONTROL_CLIENT_DIR}/worker.key"
TASK_SOURCES = {
    "orchestrator": "claims tasks from autocode-control; the agent runs as " + AGENT_USER,
    "inbox": "runs task files moved into its inbox; the agent runs as the worker's account",
}


def _limits(value: Any) -> dict:
    if not isinstance(value, dict):
        raise SettingProblem(f"must map limits to numbers, e.g. {{task_timeout_s: 3600}}; "
                             f"the limits are {', '.join(LIMITS)}")
    problems = Problems()
    for name in sorted(set(value) - set(LIMITS), key=str):
        problems.add(f".{name}", "no such limit", f"use {', '.join(LIMITS)}")
    for name in LIMITS:
        if name in value:
            check_limit(problems, f".{name}", value[name], *RUNTIME_LIMITS[name])
    if problems:
        raise SettingProblem(*((p.field, p.text) for p in problems))
    return value


def _text(*checks):
    """A string (or unset), then `checks` (problems, field, value) on a non-empty one."""
    def run(value):
        if value is None:
            return value
        if not isinstance(value, str):
            raise SettingProblem(f"{value!r} must be a string")
        found = Problems()
        for check in checks:
            if value:
                check(found, "", value)
        if found:
            raise SettingProblem(*((p.field, p.text) for p in found))
        return value
    return Annotated[Any, AfterValidator(run), For("worker")]


def _absolute(problems: Problems, field: str, value: str) -> None:
    if not value.startswith("/"):
        problems.add(field, f"{value!r} must be an absolute path on the worker")


class Worker(Settings):
    model_endpoint: _text(lambda p, f, v: check_url(
        p, f, v, ("http", "https"), "http://orchestrator:8000/v1", "an http(s) URL")) = ""
    """http(s) base URL of the model API agents use; empty: the orchestrator's model
    server at http://<orchestrator_address>:<model_api_port>/v1."""
    model_name: _text() = "qwen-2.5-coder-32b"
    """The model agents ask for."""
    model_api_key_file: _text(_absolute) = ""
    """A file on the worker holding the model API's key, if it needs one."""
    orchestrator_url: _text(lambda p, f, v: check_url(
        p, f, v, ("http", "https"), "https://10.0.1.1:7444")) = ""
    """The task service's URL for the worker; empty: https://<orchestrator_address>:
    <control_worker_port> (with task_source inbox: http://<orchestrator_address>)."""
    task_source: Annotated[choice(TASK_SOURCES, "a task source"), For("worker")] = \
        "orchestrator"
    """Where the worker takes its tasks: the orchestrator's task service, or its inbox."""
    agent_limits: Annotated[Any, AfterValidator(_limits), For("worker")] = {
        "task_timeout_s": 3600, "kill_grace_s": 10, "max_turns": 50, "max_output_mb": 16,
        "poll_interval_s": 5}
    """Per task: wall-clock limit, SIGTERM-to-SIGKILL grace, agent turns, output kept; and
    how often the inbox is read."""
    task_cleanup_days: Annotated[Any, checked(
        lambda p, f, v: check_limit(p, f, v, float, False)), For("worker")] = 14
    """Finished tasks' work trees and run logs go this many days after their result
    (`autocode-worker cleanup`, daily); results and task files stay."""
    task_cleanup_calendar: Annotated[str, checked(calendar, "*-*-* 04:20:00"),
                                     For("worker")] = "*-*-* 04:20:00"
    """When that cleanup runs (systemd OnCalendar)."""
    tmp_cleanup_days: Annotated[int, Field(ge=1), Describe(
        "a whole number of days >= 1", "e.g. 7"), For("worker")] = 7
    """/tmp and /var/tmp: what nobody has touched for this many days goes, by
    systemd-tmpfiles' daily clean (a running service's private /tmp is systemd's)."""

    @property
    def claims(self) -> bool:
        return self.task_source == "orchestrator"

    def url_of_orchestrator(self, orchestrator_address: str, control_port: int) -> str:
        if self.orchestrator_url:
            return self.orchestrator_url
        host = f"[{orchestrator_address}]" if ":" in orchestrator_address else \
            orchestrator_address
        return f"https://{host}:{control_port}" if self.claims else f"http://{host}"

    def rules(self, problems: Problems, host: HostSettings) -> None:
        if host.role != "worker":
            return
        if any(host.get(m) is None for m in (Base, Runtime, AgentClis, Serving, Control)):
            return  # those say what is wrong, once
        # The runtime's own parser on the very file the host will get; what depends on the
        # host (folders, files) is checked there, by `autocode-worker check`.
        try:
            parse_worker_config(worker_yaml(host, host.name or "worker"), on_host=False)
        except ConfigError as exc:
            for setting, text in exc.problems:
                problems.add(f"{CONFIG_NAME} {setting}", text)


def config_path(base: Base) -> str:
    return f"{base.config_dir}/{CONFIG_NAME}"


def worker_yaml(settings: HostSettings, name: str) -> dict:
    """worker.yaml for the worker `name`, from its settings."""
    base, runtime, clis = settings[Base], settings[Runtime], settings[AgentClis]
    worker, address = settings[Worker], settings[Addresses].orchestrator_address or "127.0.0.1"
    yaml_settings = {
        "worker_id": name,
        "project_id": runtime.project_id,
        "agent_type": runtime.agent_type,
        # A string: the runtime reads it as an exact Decimal, never through a float.
        "daily_budget_usd": str(runtime.daily_budget_usd),
        "data_root": base.data_root,
        "timezone": runtime.timezone,
        "orchestrator_url": worker.url_of_orchestrator(address,
                                                       settings[Control].control_worker_port),
        "model_endpoint": worker.model_endpoint or settings[Serving].model_endpoint(address),
        "model_name": worker.model_name,
        **worker.agent_limits,
        "cleanup_after_days": worker.task_cleanup_days,
        "agent_binaries": clis.binaries(runtime.agent_type, base.install_dir,
                                        base.service_home),
    }
    if worker.model_api_key_file:
        yaml_settings["model_api_key_file"] = worker.model_api_key_file
    if worker.claims:
        yaml_settings.update(control_cert=CONTROL_CERT, control_key=CONTROL_KEY,
                             control_ca=TRUSTED_CA, agent_user=AGENT_USER)
    return yaml_settings
