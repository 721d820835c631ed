"""The task service's settings (autocode-control on the orchestrator: docs/control.md) and
where its files are, on the orchestrator and beside the inventory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from autocode.problems import Problems
from infra.inventory_file import inventory_path
from infra.settings import Describe, For, HostSettings, Port, Settings, private_file

CONTROL_USER = "autocode-control"
UNIT = "autocode-control.service"
CONFIG = "/etc/autocode/control.yaml"
PKI_DIR = "/etc/autocode/control"
TLS_CERT = f"{PKI_DIR}/control.crt"
TLS_KEY = f"{PKI_DIR}/control.key"
TOKEN_SHA256 = f"{PKI_DIR}/operator-token.sha256"
# Beside the inventory: what `autocode task` reads (autocode/control/cli.py).
ENDPOINT_FILE = "autocode-control.json"

OrchestratorPort = Annotated[Port, For("orchestrator")]


def running_tasks_file(data_root: str) -> str:
    """Which task each worker runs: the service writes it, the proxy reads it
    (autocode/control/config.py names the same files under data_root)."""
    return f"{data_root}/control/running-tasks.json"


def task_dirs(data_root: str) -> tuple[str, str]:
    """Where the proxy writes for the service: over-budget marks, per-task traffic."""
    return (f"{data_root}/control/over-budget", f"{data_root}/control/traffic")


class Control(Settings):
    control_operator_port: OrchestratorPort = 7443
    """The operators' API (`autocode task`): HTTPS and the token, from management_networks."""
    control_worker_port: Port = 7444
    """The workers' API (claims, logs, results, git): HTTPS with client certificates."""
    control_default_budget_usd: Annotated[int | float, Field(gt=0), Describe(
        "a positive amount in USD", "e.g. control_default_budget_usd: 5"),
        For("orchestrator")] = 5
    """A task's budget when `submit` gives no --budget (at most its worker's daily one)."""
    control_lease_s: Annotated[int, Field(ge=5, le=3600), Describe(
        "seconds, 5-3600", "e.g. control_lease_s: 60"), For("orchestrator")] = 60
    """How long a claimed task lives without its worker's heartbeat (then: interrupted)."""
    control_token_file: Annotated[str | None, For("orchestrator")] = None
    """Control-machine path of the operator token (0600); default: beside the inventory."""

    def token_file(self) -> Path:
        if self.control_token_file:
            return Path(self.control_token_file).expanduser()
        inv = inventory_path()
        return inv.with_name(f"{inv.stem}.control-token.json")

    @staticmethod
    def endpoint_file() -> Path:
        return inventory_path().with_name(ENDPOINT_FILE)

    def rules(self, problems: Problems, host: HostSettings) -> None:
        if self.control_operator_port == self.control_worker_port:
            problems.add("control_worker_port", "must differ from control_operator_port "
                         f"({self.control_operator_port})", "e.g. 7444")
        if host.role == "orchestrator" and self.token_file().exists():
            private_file(problems, "control_token_file", str(self.token_file()))
