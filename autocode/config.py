"""worker.yaml and task files: load, validate, and explain what is wrong.

worker.yaml (rendered by the deploy to /etc/autocode/worker.yaml)
-----------------------------------------------------------------
Required:
  worker_id:          worker-1          letters, digits, ".", "_", "-"
  project_id:         autocode          same characters
  agent_type:         claude-code       claude-code | aider | qwen-coder | cursor-cli
  daily_budget_usd:   "25.00"           > 0; a string or number, read as an exact Decimal
Optional (default):
  data_root:          /mnt/data/autocode    must exist (the deploy creates it)
  timezone:           UTC                   IANA zone in which budget days start
  model_endpoint:     (none)                http(s) URL of the orchestrator's model API
  model_name:         (none)                e.g. qwen-2.5-coder-32b
  model_api_key_file: (none)                file holding the model API key; must exist
  task_timeout_s:     3600                  wall-clock limit per task, > 0
  kill_grace_s:       10                    SIGTERM -> SIGKILL delay on timeout, >= 0
  max_turns:          50                    default agent turn limit per task, > 0
  max_output_mb:      16                    stdout kept per task; the rest is discarded
  poll_interval_s:    5                     how often `serve` looks at the inbox, > 0
  cleanup_after_days: 14                    `cleanup` removes a finished task's work tree
                                            and run logs this many days after its result
  artifacts_dir:      <data_root>/worker-artifacts/<worker_id>
  inbox_dir:          <artifacts_dir>/inbox
  logs_root:          <data_root>/logs
  agent_binaries:     {}                    per agent type, a command name or full path,
                                            e.g. {claude-code: /usr/local/bin/claude}
  agent_extra_args:   []                    extra arguments for the agent CLI
  agent_user:         (none)                the account the agent CLI runs as, when not
                                            the worker's own (the worker needs root or
                                            CAP_SETUID/CAP_SETGID); its work tree is
                                            handed to it, nothing else of the worker's
  orchestrator_url:   (none)                http(s) URL of the orchestrator
  control_cert:       (none)                this worker's client certificate for
  control_key:        (none)                autocode-control (with its key and the CA that
  control_ca:         (none)                signed the service's); all three set: `serve`
                                            claims tasks from orchestrator_url (https)
                                            instead of the inbox

The environment overrides three of them, as the Nomad job and the systemd unit set them:
DAILY_BUDGET (daily_budget_usd), PROJECT_ID (project_id), ORCHESTRATOR_URL
(orchestrator_url); they are checked like the file's values.

Unknown keys are errors (a typo must not silently fall back to a default).

Task file (JSON, one task)
--------------------------
  {"prompt": "Fix the failing test",      required, non-empty string
   "id": "fix-123",                       optional; default: the file name without .json
   "workdir": "/srv/repos/app",           optional absolute path of an existing directory;
                                          default <artifacts_dir>/projects/<id> (created)
   "timeout_s": 900,                      optional, > 0; default task_timeout_s
   "max_turns": 30,                       optional, > 0; default max_turns
   "max_cost_usd": "2.50"}                optional, > 0; caps this task below the day's rest
"""

from __future__ import annotations

import json
import math
import pwd
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from autocode.agents.factory import AgentFactory
from autocode.agents.types import TASK_ID_PATTERN, AgentConfig, Task
from autocode.problems import Problems

DEFAULT_CONFIG_PATH = Path("/etc/autocode/worker.yaml")
DEFAULT_DATA_ROOT = Path("/mnt/data/autocode")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")  # \Z: `$` admits a final \n


class ConfigError(ValueError):
    """Invalid worker.yaml; the message lists every problem with its fix, and `problems`
    holds them (autocode/problems.py; each unpacks as (setting, text))."""

    def __init__(self, message: str, problems: Problems | None = None):
        super().__init__(message)
        self.problems = problems if problems is not None else Problems()


class TaskFileError(ValueError):
    """Invalid task file; the message names the field and the fix."""


@dataclass(frozen=True)
class WorkerConfig:
    worker_id: str
    project_id: str
    agent_type: str
    daily_budget_usd: Decimal
    data_root: Path = DEFAULT_DATA_ROOT
    timezone: str = "UTC"
    model_endpoint: str | None = None
    model_name: str | None = None
    model_api_key_file: Path | None = None
    task_timeout_s: float = 3600.0
    kill_grace_s: float = 10.0
    max_turns: int = 50
    max_output_mb: int = 16
    poll_interval_s: float = 5.0
    cleanup_after_days: float = 14.0
    artifacts_dir: Path = Path()
    inbox_dir: Path = Path()
    logs_root: Path = Path()
    agent_binaries: dict[str, str] = field(default_factory=dict)
    agent_extra_args: tuple[str, ...] = ()
    agent_user: str | None = None
    orchestrator_url: str | None = None
    control_cert: Path | None = None
    control_key: Path | None = None
    control_ca: Path | None = None

    @property
    def claims_from_orchestrator(self) -> bool:
        return self.control_cert is not None

    @property
    def results_dir(self) -> Path:
        return self.artifacts_dir / "results"

    @property
    def runs_dir(self) -> Path:
        return self.artifacts_dir / "runs"

    @property
    def projects_dir(self) -> Path:
        return self.artifacts_dir / "projects"

    @property
    def rejected_dir(self) -> Path:
        return self.artifacts_dir / "rejected"

    @property
    def reports_dir(self) -> Path:
        return self.data_root / "financial" / "reports"

    def agent_config(self) -> AgentConfig:
        return AgentConfig(
            worker_id=self.worker_id, project_id=self.project_id,
            daily_budget_usd=self.daily_budget_usd, workdir=self.projects_dir,
            logs_dir=self.runs_dir, model_endpoint=self.model_endpoint,
            model_name=self.model_name, api_key_file=self.model_api_key_file,
            binary_path=self.agent_binaries.get(self.agent_type),
            task_timeout_s=self.task_timeout_s, kill_grace_s=self.kill_grace_s,
            max_turns=self.max_turns, max_output_bytes=self.max_output_mb * 1024 * 1024,
            extra_args=self.agent_extra_args, run_as=self.agent_user,
        )


_REQUIRED = ("worker_id", "project_id", "agent_type", "daily_budget_usd")
_KNOWN = set(WorkerConfig.__dataclass_fields__)
# Variables that override a setting of the file (the seed's job and unit set them).
ENV_OVERRIDES = {"DAILY_BUDGET": "daily_budget_usd", "PROJECT_ID": "project_id",
                 "ORCHESTRATOR_URL": "orchestrator_url"}


def load_worker_config(path: Path | str, environ: dict[str, str] | None = None,
                       agent_type: str | None = None) -> WorkerConfig:
    """Read and check worker.yaml; `environ` values of ENV_OVERRIDES and an explicit
    `agent_type` (the CLI's --agent-type) take precedence over the file's."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; pass --config with its path") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    origins = {}
    for variable, name in ENV_OVERRIDES.items():
        if (environ or {}).get(variable):
            raw[name], origins[name] = environ[variable], f"environment variable {variable}"
    if agent_type is not None:
        raw["agent_type"], origins["agent_type"] = agent_type, "--agent-type"
    return parse_worker_config(raw, source=str(path), origins=origins)


# The limits worker.yaml takes: name -> (type, whether 0 is allowed).
LIMITS = {"task_timeout_s": (float, False), "kill_grace_s": (float, True),
          "max_turns": (int, False), "max_output_mb": (int, False),
          "poll_interval_s": (float, False), "cleanup_after_days": (float, False)}


def check_limit(problems: Problems, field: str, value: Any, kind: type, zero_ok: bool
                ) -> bool:
    """A limit: a number (an int where `kind` is int) > 0, or >= 0 with `zero_ok`."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        ok = ok and isinstance(value, int)
    if ok and value > 0 or ok and zero_ok and value == 0:
        return True
    wanted = "an integer" if kind is int else "a number"
    problems.add(field, f"{value!r} is not valid", f"use {wanted} {'>= 0' if zero_ok else '> 0'}")
    return False


def check_url(problems: Problems, field: str, value: Any, schemes: tuple[str, ...],
              example: str, what: str | None = None) -> bool:
    """A URL of one of `schemes`, with a host; `what` says what it is in the message."""
    parsed = urlparse(str(value))
    if parsed.scheme in schemes and parsed.netloc:
        return True
    what = what or f"a {' or '.join(schemes)} URL"
    problems.add(field, f"{value!r} is not {what}", f"write e.g. {example}")
    return False


def parse_worker_config(raw: dict[str, Any], source: str = "worker.yaml",
                        origins: dict[str, str] | None = None,
                        on_host: bool = True) -> WorkerConfig:
    """Check every setting; `origins` names where an overridden setting came from.
    Off the host (`on_host` False: the deploy checking a file before sending it), the
    folders and files it names are not looked for."""
    problems = Problems()
    values: dict[str, Any] = {}

    def problem(name: str, text: str) -> None:
        problems.add(name, text)

    for name in sorted(set(raw) - _KNOWN):
        problem(str(name), f"unknown setting; valid settings: {', '.join(sorted(_KNOWN))}")
    for name in _REQUIRED:
        if raw.get(name) in (None, ""):
            problem(name, "required; set it in the config file")

    for name in ("worker_id", "project_id"):
        value = raw.get(name)
        if value not in (None, "") and not (isinstance(value, str) and NAME_PATTERN.match(value)):
            problem(name, f"{value!r} is not a valid name; use letters, digits, '.', '_', '-'")
        else:
            values[name] = value

    agent_type = raw.get("agent_type")
    if agent_type not in (None, "") and agent_type not in AgentFactory.AGENTS:
        problem("agent_type", f"unknown agent type {agent_type!r}; "
                              f"use one of {', '.join(sorted(AgentFactory.AGENTS))}")
    values["agent_type"] = agent_type

    if raw.get("daily_budget_usd") not in (None, ""):
        budget = _decimal(raw["daily_budget_usd"])
        if budget is None or budget <= 0:
            problem("daily_budget_usd", f"{raw['daily_budget_usd']!r} is not a positive amount "
                                        "of USD; write e.g. \"25.00\"")
        else:
            values["daily_budget_usd"] = budget

    data_root = Path(str(raw.get("data_root") or DEFAULT_DATA_ROOT))
    if not data_root.is_absolute():
        problem("data_root", f"{data_root} must be an absolute path")
    elif on_host and not data_root.is_dir():
        problem("data_root", f"{data_root} does not exist; create it (the deploy does) "
                             "or point data_root at an existing directory")
    values["data_root"] = data_root

    tz = raw.get("timezone", "UTC")
    try:
        ZoneInfo(str(tz))
        values["timezone"] = str(tz)
    except (ZoneInfoNotFoundError, ValueError):
        problem("timezone", f"{tz!r} is not an IANA time zone; use e.g. UTC or Europe/Berlin")

    endpoint = raw.get("model_endpoint")
    if endpoint is not None:
        check_url(problems, "model_endpoint", endpoint, ("http", "https"),
                  "http://orchestrator:8000/v1", "an http(s) URL")
        values["model_endpoint"] = str(endpoint)
    if raw.get("model_name") is not None:
        values["model_name"] = str(raw["model_name"])
    if raw.get("model_api_key_file") is not None:
        key_file = Path(str(raw["model_api_key_file"]))
        if on_host and not key_file.is_file():
            problem("model_api_key_file", f"{key_file} does not exist; create it or remove "
                                          "the setting")
        values["model_api_key_file"] = key_file

    if raw.get("orchestrator_url") is not None:
        check_url(problems, "orchestrator_url", raw["orchestrator_url"], ("http", "https"),
                  "http://10.0.1.1")
        values["orchestrator_url"] = str(raw["orchestrator_url"])
    control = {n: raw.get(n) for n in ("control_cert", "control_key", "control_ca")}
    if any(v is not None for v in control.values()):
        for name, value in control.items():
            if value is None:
                problem(name, "set control_cert, control_key and control_ca together (the "
                              "client certificate for autocode-control), or none of them")
            elif not Path(str(value)).is_absolute():
                problem(name, f"{value} must be an absolute path")
            elif on_host and not Path(str(value)).is_file():
                problem(name, f"{value} does not exist; the deploy writes it")
            else:
                values[name] = Path(str(value))
        url = raw.get("orchestrator_url")
        if url is None or urlparse(str(url)).scheme != "https":
            problem("orchestrator_url", f"{url!r}: claiming from the orchestrator needs its "
                                        "https URL; write e.g. https://10.0.1.1:7444")
    for name, (kind, zero_ok) in LIMITS.items():
        if name in raw and check_limit(problems, name, raw[name], kind, zero_ok):
            values[name] = kind(raw[name])

    binaries = raw.get("agent_binaries") or {}
    if not isinstance(binaries, dict):
        problem("agent_binaries", "must be a mapping of agent type to command or path")
        binaries = {}
    for kind, command in binaries.items():
        if kind not in AgentFactory.AGENTS:
            problem(f"agent_binaries.{kind}", f"unknown agent type; use one of "
                                              f"{', '.join(sorted(AgentFactory.AGENTS))}")
        elif not isinstance(command, str) or not command:
            problem(f"agent_binaries.{kind}", "must be a command name or an absolute path")
        elif on_host and "/" in command and not Path(command).is_file():
            problem(f"agent_binaries.{kind}", f"{command} does not exist; install the agent "
                                              "or fix the path")
    values["agent_binaries"] = {str(k): str(v) for k, v in binaries.items()}

    extra = raw.get("agent_extra_args") or []
    if not (isinstance(extra, list) and all(isinstance(a, str) for a in extra)):
        problem("agent_extra_args", "must be a list of strings")
        extra = []
    values["agent_extra_args"] = tuple(extra)

    user = raw.get("agent_user")
    if user is not None:
        if not (isinstance(user, str) and NAME_PATTERN.match(user)):
            problem("agent_user", f"{user!r} is not an account name")
        elif on_host and not _account_exists(user):
            problem("agent_user", f"no account {user!r} on this host; create it (the deploy "
                                  "does) or remove the setting")
        else:
            values["agent_user"] = user

    for name in ("artifacts_dir", "inbox_dir", "logs_root"):
        if raw.get(name) is not None and not Path(str(raw[name])).is_absolute():
            problem(name, f"{raw[name]} must be an absolute path")

    if problems:
        lines = []
        for p in problems:
            origin = (origins or {}).get(p.field)
            lines.append(f"{p.field}{f' (from {origin})' if origin else ''}: {p.text}")
        raise ConfigError(f"{source} is invalid:\n  - " + "\n  - ".join(lines), problems)

    artifacts = Path(str(raw.get("artifacts_dir") or
                         data_root / "worker-artifacts" / values["worker_id"]))
    values["artifacts_dir"] = artifacts
    values["inbox_dir"] = Path(str(raw.get("inbox_dir") or artifacts / "inbox"))
    values["logs_root"] = Path(str(raw.get("logs_root") or data_root / "logs"))
    return WorkerConfig(**values)


def _account_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        result = Decimal(str(value))
    except InvalidOperation:
        return None
    return result if result.is_finite() else None


_TASK_FIELDS = {"id", "prompt", "workdir", "timeout_s", "max_turns", "max_cost_usd"}


def load_task_file(path: Path | str, config: WorkerConfig) -> Task:
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise TaskFileError(f"{path}: task file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskFileError(f"{path}: cannot read task file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise TaskFileError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    return parse_task(raw, config, default_id=path.stem, source=str(path))


def parse_task(raw: Any, config: WorkerConfig, default_id: str, source: str) -> Task:
    def fail(name: str, text: str) -> TaskFileError:
        return TaskFileError(f"{source}: {name}: {text}")

    if not isinstance(raw, dict):
        raise TaskFileError(f"{source}: expected a JSON object with at least \"prompt\"")
    unknown = sorted(set(raw) - _TASK_FIELDS)
    if unknown:
        raise fail(unknown[0], f"unknown field; valid fields: {', '.join(sorted(_TASK_FIELDS))}")

    prompt = raw.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise fail("prompt", "required; a non-empty string telling the agent what to do")

    task_id = raw.get("id", default_id)
    if not isinstance(task_id, str) or not TASK_ID_PATTERN.match(task_id):
        raise fail("id", f"{task_id!r} is not a valid id; use letters, digits, '.', '_', '-' "
                         "(at most 128)")

    workdir = raw.get("workdir")
    if workdir is None:
        workdir_path = config.projects_dir / task_id
    elif not isinstance(workdir, str) or not Path(workdir).is_absolute():
        raise fail("workdir", f"{workdir!r} must be an absolute path string")
    else:
        workdir_path = Path(workdir)
        if not workdir_path.is_dir():
            raise fail("workdir", f"{workdir} does not exist; clone the repository first or "
                                  "leave workdir out to use a fresh project directory")

    timeout = raw.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                or timeout <= 0):
        raise fail("timeout_s", f"{timeout!r} must be a number > 0 (seconds)")
    max_turns = raw.get("max_turns")
    if max_turns is not None and (isinstance(max_turns, bool) or not isinstance(max_turns, int)
                                  or max_turns <= 0):
        raise fail("max_turns", f"{max_turns!r} must be an integer > 0")
    max_cost = None
    if raw.get("max_cost_usd") is not None:
        max_cost = _decimal(raw["max_cost_usd"])
        if max_cost is None or max_cost <= 0:
            raise fail("max_cost_usd", f"{raw['max_cost_usd']!r} must be a positive amount "
                                       "of USD, e.g. \"2.50\"")

    return Task(task_id=task_id, prompt=prompt, workdir=workdir_path,
                timeout_s=float(timeout) if timeout is not None else None,
                max_turns=max_turns, max_cost_usd=max_cost)
