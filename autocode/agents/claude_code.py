"""Claude Code, driven headless: `claude -p PROMPT --output-format json`."""

from __future__ import annotations

import os

from .base import HeadlessCliAgent, RunContext, load_json_output, result_from_event
from .process import ProcessOutcome
from .types import TaskResult

# Without a permission mode that allows them, `-p` runs deny every edit and command.
# bypassPermissions lets the agent run builds and tests too; the CLI refuses it as root
# (run agents as an unprivileged user). Override with extra_args, e.g.
# ("--permission-mode", "acceptEdits"): the last occurrence wins.
PERMISSION_MODE = "bypassPermissions"


def anthropic_base_url(endpoint: str) -> str:
    """The Anthropic SDK appends /v1/messages itself: hand it the root, not .../v1."""
    url = endpoint.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class ClaudeCodeAgent(HeadlessCliAgent):
    """Claude Code CLI. Its JSON result carries total_cost_usd, num_turns, is_error,
    subtype and session_id; the remaining daily budget is passed as --max-budget-usd so the
    CLI itself stops spending. The model endpoint is handed over as ANTHROPIC_BASE_URL (its
    root: the SDK adds /v1/messages). Nonessential traffic (telemetry, error reports,
    auto-update) is switched off, and every model alias maps to the configured model, so
    background and sub-agent calls go to a model the endpoint serves."""

    kind = "claude-code"
    default_binary = "claude"
    install_hint = (
        "the npm package @anthropic-ai/claude-code (npm install -g @anthropic-ai/claude-code)"
    )

    def build_args(self, ctx: RunContext) -> list[str]:
        return ["-p", ctx.task.prompt, "--output-format", "json",
                "--max-turns", str(ctx.max_turns),
                "--max-budget-usd", self.format_usd(ctx.budget_cap_usd),
                "--permission-mode", PERMISSION_MODE]

    def build_env(self, ctx: RunContext) -> dict[str, str]:
        env = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"}
        if self.config.model_endpoint:
            env["ANTHROPIC_BASE_URL"] = anthropic_base_url(self.config.model_endpoint)
        if self.config.model_name:
            for name in ("ANTHROPIC_MODEL", "ANTHROPIC_SMALL_FAST_MODEL",
                         "ANTHROPIC_DEFAULT_HAIKU_MODEL", "ANTHROPIC_DEFAULT_SONNET_MODEL",
                         "ANTHROPIC_DEFAULT_OPUS_MODEL", "CLAUDE_CODE_SUBAGENT_MODEL"):
                env[name] = self.config.model_name
        # A self-hosted endpoint needs no key, but without one the CLI stops at "Not
        # logged in"; a key the service's environment already has is kept.
        env["ANTHROPIC_API_KEY"] = self.api_key() or os.environ.get("ANTHROPIC_API_KEY") or "none"
        return env

    def parse_output(self, ctx: RunContext, outcome: ProcessOutcome) -> TaskResult:
        return result_from_event(self.kind, ctx.task.task_id, load_json_output(outcome.stdout),
                                 with_cost=True)
