"""Claude Code, driven headless: `claude -p PROMPT --output-format json`."""

from __future__ import annotations

from .base import HeadlessCliAgent, RunContext, load_json_output, result_from_event
from .process import ProcessOutcome
from .types import TaskResult


class ClaudeCodeAgent(HeadlessCliAgent):
    """Claude Code CLI. Its JSON result carries total_cost_usd, num_turns, is_error,
    subtype and session_id; the remaining daily budget is passed as --max-budget-usd so the
    CLI itself stops spending. The model endpoint is handed over as ANTHROPIC_BASE_URL."""

    kind = "claude-code"
    default_binary = "claude"
    install_hint = (
        "the npm package @anthropic-ai/claude-code (npm install -g @anthropic-ai/claude-code)"
    )

    def build_args(self, ctx: RunContext) -> list[str]:
        return ["-p", ctx.task.prompt, "--output-format", "json",
                "--max-turns", str(ctx.max_turns),
                "--max-budget-usd", self.format_usd(ctx.budget_cap_usd)]

    def build_env(self, ctx: RunContext) -> dict[str, str]:
        env = {}
        if self.config.model_endpoint:
            env["ANTHROPIC_BASE_URL"] = self.config.model_endpoint
        if self.config.model_name:
            env["ANTHROPIC_MODEL"] = self.config.model_name
        if (key := self.api_key()) is not None:
            env["ANTHROPIC_API_KEY"] = key
        return env

    def parse_output(self, ctx: RunContext, outcome: ProcessOutcome) -> TaskResult:
        return result_from_event(self.kind, ctx.task.task_id, load_json_output(outcome.stdout),
                                 with_cost=True)
