"""The swappable agent interface, and the shared machinery for headless agent CLIs."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any, ClassVar

from loguru import logger

from autocode.budget import BudgetLedger, BudgetStatus

from .process import ProcessOutcome, run_bounded
from .types import (
    AGENT_REPORTED,
    CANCELLED,
    FAILED,
    REFUSED_BUDGET,
    SUCCEEDED,
    TIMED_OUT,
    AgentConfig,
    Task,
    TaskResult,
)

SUMMARY_MAX_CHARS = 4000
# Never hand the agent our own credentials: it gets only what its CLI needs.
_ENV_PREFIXES_WITHHELD = ("VAULT_",)


class AgentBinaryNotFoundError(RuntimeError):
    """The agent's command-line tool is not installed (or not where the config says)."""


class OutputParseError(ValueError):
    """The CLI exited but its output is not the documented shape."""


class CodingAgent(ABC):
    """What every coding agent offers the worker, whatever drives it."""

    kind: ClassVar[str] = "abstract"

    def __init__(self, config: AgentConfig, ledger: BudgetLedger | None = None):
        self.config = config
        self.ledger = ledger if ledger is not None else BudgetLedger.in_memory()

    @abstractmethod
    def execute_task(self, task: Task) -> TaskResult: ...

    @abstractmethod
    def report_spending(self) -> dict[str, Any]: ...

    @abstractmethod
    def check_budget(self) -> BudgetStatus: ...


@dataclass(frozen=True)
class RunContext:
    task: Task
    binary: str
    workdir: Path
    run_dir: Path
    budget_cap_usd: Decimal
    max_turns: int


class HeadlessCliAgent(CodingAgent):
    """Runs one CLI invocation per task, bounded in time, memory and money.

    Subclasses say how to build the command line and environment and how to read the
    CLI's output; this class does budget checks, process handling, logs and charging.
    """

    default_binary: ClassVar[str]
    install_hint: ClassVar[str]
    # False for CLIs that report no cost: their spend reaches the ledger only by metering.
    reports_cost: ClassVar[bool] = True

    # -- the interface -----------------------------------------------------------

    def check_budget(self) -> BudgetStatus:
        return self.ledger.check_budget(self.config.daily_budget_usd, self.config.worker_id)

    def report_spending(self) -> dict[str, Any]:
        report = {"worker_id": self.config.worker_id, "project_id": self.config.project_id,
                  "agent": self.kind, **self.check_budget().to_dict()}
        report["cost_source"] = AGENT_REPORTED if self.reports_cost else "metered-only"
        if not self.reports_cost:
            report["note"] = (f"{self.default_binary} reports no cost; its spend is known only "
                              "from metered charges in the ledger")
        return report

    def execute_task(self, task: Task, *, cancel: threading.Event | None = None,
                     on_output: Callable[[bytes], None] | None = None) -> TaskResult:
        """`cancel`: set it to kill the CLI's process group (the result is `cancelled`);
        `on_output`: sees the CLI's output as it comes."""
        status = self.check_budget()
        if not status.allowed:
            logger.warning("refusing task {}: daily budget spent ({} of {} USD)",
                           task.task_id, status.spent_usd, status.daily_budget_usd)
            return TaskResult(task.task_id, self.kind, REFUSED_BUDGET,
                              summary=f"daily budget exhausted: spent {status.spent_usd} of "
                                      f"{status.daily_budget_usd} USD on {status.day}")
        cap = status.remaining_usd
        if task.max_cost_usd is not None:
            cap = min(cap, task.max_cost_usd)

        binary = self.resolve_binary()
        workdir = Path(task.workdir or self.config.workdir)
        run_dir = self.config.logs_dir / task.task_id
        run_dir.mkdir(parents=True, exist_ok=True)
        if not workdir.is_dir():
            return TaskResult(task.task_id, self.kind, FAILED, logs_path=run_dir,
                              error=f"working directory {workdir} does not exist")
        ctx = RunContext(task, binary, workdir, run_dir, cap,
                         task.max_turns or self.config.max_turns)

        argv = [binary, *self.build_args(ctx), *self.config.extra_args]
        env = self._child_env(ctx)
        account = None
        if self.config.run_as:
            try:
                account = hand_over(workdir, self.config.run_as, env)
            except (KeyError, OSError) as exc:
                return TaskResult(task.task_id, self.kind, FAILED, logs_path=run_dir,
                                  error=f"cannot run the agent as {self.config.run_as}: {exc}")
        timeout = task.timeout_s or self.config.task_timeout_s
        logger.info("task {} starting: agent={} workdir={} timeout={}s budget_cap={} USD",
                    task.task_id, self.kind, workdir, timeout, cap)
        try:
            outcome = run_bounded(argv, env=env, cwd=workdir, timeout_s=timeout,
                                  max_stdout_bytes=self.config.max_output_bytes,
                                  stderr_tail_bytes=self.config.stderr_tail_bytes,
                                  kill_grace_s=self.config.kill_grace_s,
                                  cancel=cancel, on_output=on_output, account=account)
        except OSError as exc:  # exists but cannot run: not executable, bad interpreter
            return TaskResult(task.task_id, self.kind, FAILED, logs_path=run_dir,
                              error=f"cannot start {binary}: {exc.strerror or exc}")
        if account is not None:  # the tree back to the worker, for its commit and cleanup
            _chown_tree(workdir, os.geteuid(), os.getegid())
        self._save_run_logs(run_dir, argv, outcome)
        result = self._interpret(ctx, outcome)
        result.logs_path = run_dir
        result.duration_s = outcome.duration_s
        self._charge(task, result)
        logger.info("task {} finished: status={} cost={} ({}) turns={} duration={:.1f}s",
                    task.task_id, result.status, result.cost_usd, result.cost_source,
                    result.num_turns, result.duration_s)
        return result

    # -- for subclasses ------------------------------------------------------------

    @abstractmethod
    def build_args(self, ctx: RunContext) -> list[str]:
        """Arguments after the binary."""

    def build_env(self, ctx: RunContext) -> dict[str, str]:
        """Variables added to the child's environment."""
        return {}

    @abstractmethod
    def parse_output(self, ctx: RunContext, outcome: ProcessOutcome) -> TaskResult:
        """Read the CLI's output; raise OutputParseError if it is not the documented shape."""

    # -- helpers -------------------------------------------------------------------

    def resolve_binary(self) -> str:
        name = self.config.binary_path or self.default_binary
        found = shutil.which(name)
        if found is None:
            where = "at that path" if os.sep in name else "on PATH"
            raise AgentBinaryNotFoundError(
                f"{self.kind}: command {name!r} not found {where}; install {self.install_hint}, "
                f"or set agent_binaries.{self.kind} in worker.yaml to its full path"
            )
        return found

    def api_key(self) -> str | None:
        if self.config.api_key_file is None:
            return None
        return Path(self.config.api_key_file).read_text().strip()

    @staticmethod
    def format_usd(amount: Decimal) -> str:
        # Round down: the cap handed to a CLI must never exceed what is really left.
        return str(amount.quantize(Decimal("0.0001"), rounding=ROUND_DOWN))

    def _child_env(self, ctx: RunContext) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_PREFIXES_WITHHELD)}
        env.update(self.build_env(ctx))
        return env

    def _interpret(self, ctx: RunContext, outcome: ProcessOutcome) -> TaskResult:
        task_id = ctx.task.task_id
        stderr_tail = outcome.stderr_text()[-2000:] or "(empty)"
        if outcome.cancelled:
            return TaskResult(task_id, self.kind, CANCELLED, exit_code=outcome.returncode,
                              error="cancelled: its process group was killed")
        if outcome.timed_out:
            limit = ctx.task.timeout_s or self.config.task_timeout_s
            return TaskResult(task_id, self.kind, TIMED_OUT, exit_code=outcome.returncode,
                              error=f"killed after the {limit}s wall-clock timeout; "
                                    f"stderr tail: {stderr_tail}")
        if outcome.stdout_truncated:
            return TaskResult(task_id, self.kind, FAILED, exit_code=outcome.returncode,
                              error=f"output too large: {outcome.stdout_total_bytes} bytes, "
                                    f"kept the first {len(outcome.stdout)}; stderr tail: "
                                    f"{stderr_tail}")
        try:
            result = self.parse_output(ctx, outcome)
        except OutputParseError as exc:
            what = f"exit code {outcome.returncode}" if outcome.returncode else "unparsable output"
            return TaskResult(task_id, self.kind, FAILED, exit_code=outcome.returncode,
                              error=f"{what}: {exc}; stderr tail: {stderr_tail}")
        result.exit_code = outcome.returncode
        if outcome.returncode != 0 and result.status == SUCCEEDED:
            result.status = FAILED
        if result.status != SUCCEEDED and result.error is None:
            result.error = f"exit code {outcome.returncode}; stderr tail: {stderr_tail}"
        return result

    def _charge(self, task: Task, result: TaskResult) -> None:
        if result.cost_usd is None:
            return
        # One key per execution: a retried write of this charge is not doubled, while a
        # genuine re-run of the same task (new spend) is charged again.
        key = f"{self.config.worker_id}:{task.task_id}:{uuid.uuid4().hex}"
        self.ledger.charge(idempotency_key=key, worker_id=self.config.worker_id,
                           agent=self.kind, task_id=task.task_id, amount_usd=result.cost_usd,
                           source=result.cost_source or AGENT_REPORTED)
        # The same charge as one structured log line: forwarded to the orchestrator with
        # the worker's logs, it is what the spend report sets beside the metered cost.
        logger.bind(charge={"key": key, "amount_usd": str(result.cost_usd),
                            "source": result.cost_source or AGENT_REPORTED,
                            "task_id": task.task_id, "agent": self.kind}).info(
            "charged {} USD for task {}", result.cost_usd, task.task_id)

    @staticmethod
    def _save_run_logs(run_dir: Path, argv: list[str], outcome: ProcessOutcome) -> None:
        (run_dir / "stdout.log").write_bytes(outcome.stdout)
        (run_dir / "stderr-tail.log").write_bytes(outcome.stderr_tail)
        (run_dir / "process.json").write_text(json.dumps({
            "argv": argv, "returncode": outcome.returncode, "timed_out": outcome.timed_out,
            "stdout_total_bytes": outcome.stdout_total_bytes,
            "stderr_total_bytes": outcome.stderr_total_bytes,
            "duration_s": round(outcome.duration_s, 3),
        }, indent=2))


def hand_over(workdir: Path, user: str, env: dict[str, str]) -> tuple[int, int]:
    """The work tree to `user`, and the child's environment to its account: (uid, gid)."""
    entry = pwd.getpwnam(user)
    _chown_tree(workdir, entry.pw_uid, entry.pw_gid)
    env.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)
    return entry.pw_uid, entry.pw_gid


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    # lchown, and walk without following links: a link the agent made moves nothing else.
    for folder, dirs, files in os.walk(top):
        for name in (folder, *(os.path.join(folder, n) for n in dirs + files)):
            os.lchown(name, uid, gid)


def load_json_output(stdout: bytes) -> Any:
    """Parse a CLI's JSON output; tolerate log lines printed before the final document."""
    text = stdout.decode("utf-8", errors="replace").strip()
    if not text:
        raise OutputParseError("no output on stdout")
    try:
        return json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError:
        pass
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith(("{", "[")):
            try:
                return json.loads(line, parse_float=Decimal)
            except json.JSONDecodeError:
                break
    raise OutputParseError(f"stdout is not JSON (starts with {text[:80]!r})")


def result_from_event(kind: str, task_id: str, event: Any, *, with_cost: bool) -> TaskResult:
    """Read the `result` event that claude, qwen and cursor-agent print in JSON mode."""
    if not isinstance(event, dict) or event.get("type", "result") != "result":
        raise OutputParseError("expected a JSON object with type 'result'")
    if "is_error" not in event and "subtype" not in event:
        raise OutputParseError("result object has neither 'is_error' nor 'subtype'")
    is_error = bool(event.get("is_error", False))
    subtype = event.get("subtype")
    ok = not is_error and subtype in (None, "success")
    usage = event.get("usage") if isinstance(event.get("usage"), dict) else {}
    cost = None
    if with_cost and event.get("total_cost_usd") is not None:
        try:
            cost = Decimal(str(event["total_cost_usd"]))
        except ArithmeticError as exc:
            raise OutputParseError(f"total_cost_usd is not a number: {exc}") from None
        if not cost.is_finite() or cost < 0:
            raise OutputParseError("total_cost_usd is not a non-negative number")
    summary = event.get("result")
    return TaskResult(
        task_id, kind, SUCCEEDED if ok else FAILED,
        summary=(summary if isinstance(summary, str) else "")[:SUMMARY_MAX_CHARS],
        cost_usd=cost, cost_source=AGENT_REPORTED if cost is not None else None,
        input_tokens=_int_or_none(usage.get("input_tokens")),
        output_tokens=_int_or_none(usage.get("output_tokens")),
        num_turns=_int_or_none(event.get("num_turns")),
        session_id=event.get("session_id") if isinstance(event.get("session_id"), str) else None,
        error=None if ok else f"agent reported {subtype or 'an error'}: {str(summary)[:500]}",
        details={"subtype": subtype, "is_error": is_error},
    )


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | Decimal) and not isinstance(value, bool) else None
