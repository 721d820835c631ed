"""autocode-control's configuration (`/etc/autocode/control.yaml`, written by the deploy).

A pydantic model, strict like the deploy's settings: a wrong type or range, or an unknown
name, is a problem naming the field and the fix, all reported at once, before the service
binds anything.
"""

from __future__ import annotations

import ipaddress
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from autocode.problems import Problems, close_names

DEFAULT_CONFIG_PATH = Path("/etc/autocode/control.yaml")


class ControlConfigError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorkerEntry(_Strict):
    # The address the worker's requests come from (its inventory address): a client
    # certificate is taken only together with its own worker's address.
    address: str
    agent_type: str
    daily_budget_usd: Decimal = Field(gt=0)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return str(ipaddress.ip_address(value))


class ControlConfig(_Strict):
    # The task database and the bare repositories live here.
    data_root: Path
    # Operators: HTTPS with the bearer token whose SHA-256 is in operator_token_sha256_file.
    operator_address: str = "0.0.0.0"
    operator_port: Annotated[int, Field(ge=1, le=65535)] = 7443
    # Workers: HTTPS with client certificates of the platform CA (mutual TLS).
    worker_address: str = "0.0.0.0"
    worker_port: Annotated[int, Field(ge=1, le=65535)] = 7444
    tls_cert: Path
    tls_key: Path
    ca_cert: Path
    # The hash, not the token: a copy of this file (a backup) lets nobody in.
    operator_token_sha256_file: Path
    # Where operators' requests may come from; anything else is refused before the token.
    management_networks: tuple[str, ...] = ()
    workers: dict[str, WorkerEntry] = {}
    default_budget_usd: Decimal = Field(default=Decimal("5"), gt=0)
    lease_s: Annotated[float, Field(ge=5, le=3600)] = 60.0
    claim_wait_s: Annotated[float, Field(ge=0, le=120)] = 25.0
    max_body_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    # The agent's live log kept per task; a worker sending more is refused.
    max_log_bytes: Annotated[int, Field(ge=1024, le=16 * 1024 ** 3)] = 64 * 1024 * 1024
    # A worker's push of its result (git over HTTPS).
    max_push_bytes: Annotated[int, Field(ge=1024 * 1024, le=16 * 1024 ** 3)] = 1024 ** 3
    max_prompt_chars: Annotated[int, Field(ge=1, le=1_000_000)] = 100_000
    # The proxy's metered ledger, for each task's metered cost and tokens (same host).
    metered_ledger: Path | None = None

    @field_validator("management_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(ipaddress.ip_network(v, strict=False)) for v in value)

    @field_validator("default_budget_usd")
    @classmethod
    def _finite(cls, value: Decimal) -> Decimal:
        if not value.is_finite():
            raise ValueError("not a finite amount")
        return value

    @property
    def database(self) -> Path:
        return self.data_root / "control" / "tasks.sqlite3"

    @property
    def repos_dir(self) -> Path:
        return self.data_root / "control" / "repos"

    @property
    def running_file(self) -> Path:
        """Which task each worker runs, for the proxy (autocode/control/running.py)."""
        return self.data_root / "control" / "running-tasks.json"

    @property
    def over_budget_dir(self) -> Path:
        return self.data_root / "control" / "over-budget"

    @property
    def task_traffic_dir(self) -> Path:
        """The proxy's per-task summaries of the hosts contacted (running.TaskTraffic)."""
        return self.data_root / "control" / "traffic"

    def worker_at(self, address: str) -> str | None:
        """The worker whose inventory address this is (never what a request says)."""
        for name, entry in self.workers.items():
            if entry.address == address:
                return name
        return None

    def agent_types(self) -> list[str]:
        return sorted({w.agent_type for w in self.workers.values()})


FIXES = {
    "data_root": "an absolute path, e.g. /var/lib/autocode",
    "operator_port": "a TCP port, 1-65535",
    "worker_port": "a TCP port, 1-65535",
    "management_networks": "a list of networks, e.g. [10.0.0.0/24]",
    "default_budget_usd": "a positive amount in USD, e.g. 5",
    "lease_s": "seconds, 5-3600",
    "claim_wait_s": "seconds, 0-120",
}


def problems_of(error: ValidationError, known: list[str]) -> Problems:
    """pydantic's errors as the project's problem lines: field, problem, fix."""
    problems = Problems()
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            name = str(item["loc"][-1])
            near = close_names(name, known) if len(item["loc"]) == 1 else []
            problems.add(field, "unknown setting",
                         f"did you mean {near[0]}?" if near else "remove it")
        else:
            problems.add(field, item["msg"], FIXES.get(str(item["loc"][0]), ""))
    return problems


def parse_config(data: Any) -> ControlConfig:
    if not isinstance(data, dict):
        raise ControlConfigError(["the file must hold a mapping of settings"])
    try:
        return ControlConfig.model_validate(data)
    except ValidationError as exc:
        known = list(ControlConfig.model_fields)
        raise ControlConfigError(problems_of(exc, known).lines()) from None


def load_config(path: Path) -> ControlConfig:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ControlConfigError([f"{path}: cannot read it ({exc.strerror})"]) from None
    except yaml.YAMLError as exc:
        raise ControlConfigError([f"{path}: not YAML ({exc})"]) from None
    return parse_config(data)

