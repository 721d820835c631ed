"""Small typed objects shared by every coding agent: its configuration, a task, a result."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

TASK_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")  # not `$`: see NAME_PATTERN

# Result statuses. "refused_budget" and "interrupted" never reached (or never finished) the CLI.
SUCCEEDED = "succeeded"
FAILED = "failed"
TIMED_OUT = "timed_out"
REFUSED_BUDGET = "refused_budget"
INTERRUPTED = "interrupted"
CANCELLED = "cancelled"  # an operator asked; the CLI's process group was killed
STATUSES = (SUCCEEDED, FAILED, TIMED_OUT, REFUSED_BUDGET, INTERRUPTED, CANCELLED)

# Where a cost figure came from; mirrors the ledger's `source` column.
AGENT_REPORTED = "agent-reported"
METERED = "metered"


@dataclass(frozen=True)
class AgentConfig:
    """Everything an agent needs to drive its CLI. Money is Decimal, never float."""

    worker_id: str
    project_id: str
    daily_budget_usd: Decimal
    workdir: Path
    logs_dir: Path
    model_endpoint: str | None = None
    model_name: str | None = None
    # A file holding the model API key: read at run time and passed only through the
    # child's environment (argv is visible to every user in `ps`).
    api_key_file: Path | None = None
    binary_path: str | None = None
    task_timeout_s: float = 3600.0
    kill_grace_s: float = 5.0
    max_turns: int = 50
    max_output_bytes: int = 16 * 1024 * 1024
    stderr_tail_bytes: int = 16 * 1024
    extra_args: tuple[str, ...] = ()
    # The account the CLI runs as, when not the worker's own: it then cannot read what only
    # the worker may (its client key for autocode-control), nor signal or trace the worker.
    run_as: str | None = None


@dataclass(frozen=True)
class Task:
    """One unit of work: a prompt run in a working directory, within limits."""

    task_id: str
    prompt: str
    workdir: Path | None = None
    timeout_s: float | None = None
    max_turns: int | None = None
    # A per-task cap; the agent uses the smaller of this and what is left of today's budget.
    max_cost_usd: Decimal | None = None


@dataclass
class TaskResult:
    task_id: str
    agent: str
    status: str
    summary: str = ""
    cost_usd: Decimal | None = None
    cost_source: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    num_turns: int | None = None
    duration_s: float = 0.0
    logs_path: Path | None = None
    session_id: str | None = None
    exit_code: int | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == SUCCEEDED

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "agent": self.agent,
            "status": self.status,
            "summary": self.summary,
            # Decimal as a string keeps the exact figure through JSON.
            "cost_usd": None if self.cost_usd is None else str(self.cost_usd),
            "cost_source": self.cost_source,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "num_turns": self.num_turns,
            "duration_s": round(self.duration_s, 3),
            "logs_path": None if self.logs_path is None else str(self.logs_path),
            "session_id": self.session_id,
            "exit_code": self.exit_code,
            "error": self.error,
            "details": self.details,
        }
