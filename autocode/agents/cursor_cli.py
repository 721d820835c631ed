"""Cursor's agent CLI, driven headless: `cursor-agent -p --force PROMPT --output-format json`."""

from __future__ import annotations

from typing import Any

from .base import HeadlessCliAgent, RunContext, load_json_output, result_from_event
from .process import ProcessOutcome
from .types import TaskResult


class CursorCliAgent(HeadlessCliAgent):
    """Cursor's agent CLI. It reports no cost at all, so this agent never charges the
    ledger itself: its spend is known only from metered charges (source "metered"),
    and report_spending() says so. It has no budget flag either; the worker's budget
    check before each task is the only cap."""

    kind = "cursor-cli"
    default_binary = "cursor-agent"
    install_hint = "Cursor's CLI with its installer (curl https://cursor.com/install -fsS | bash)"
    reports_cost = False

    def build_args(self, ctx: RunContext) -> list[str]:
        # No --model: cursor-agent talks to Cursor's own backend, not the orchestrator's.
        return ["-p", "--force", ctx.task.prompt, "--output-format", "json"]

    def build_env(self, ctx: RunContext) -> dict[str, str]:
        key = self.api_key()
        return {"CURSOR_API_KEY": key} if key is not None else {}

    def parse_output(self, ctx: RunContext, outcome: ProcessOutcome) -> TaskResult:
        return result_from_event(self.kind, ctx.task.task_id, load_json_output(outcome.stdout),
                                 with_cost=False)

    def report_spending(self) -> dict[str, Any]:
        """Today's spend from the ledger, which for this agent holds only metered charges
        (cursor-agent reports no cost); the report carries a note saying so."""
        return super().report_spending()
