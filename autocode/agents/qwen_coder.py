"""Qwen Code, driven headless: `qwen -p PROMPT --output-format json`."""

from __future__ import annotations

from .base import (
    HeadlessCliAgent,
    OutputParseError,
    RunContext,
    load_json_output,
    result_from_event,
)
from .process import ProcessOutcome
from .types import TaskResult


class QwenCoderAgent(HeadlessCliAgent):
    """Qwen Code CLI against the orchestrator's OpenAI-compatible model API
    (OPENAI_BASE_URL, OPENAI_API_KEY, OPENAI_MODEL). Its JSON output is an array of
    events; the last element of type `result` carries usage, turns and session id. A cost
    is taken only if that element reports total_cost_usd; otherwise the spend is known
    only from metering. Tools run without prompts (--approval-mode yolo: run agents as an
    unprivileged user), turns are capped with --max-session-turns, and usage statistics
    (sent to Alibaba Cloud) and telemetry are switched off."""

    kind = "qwen-coder"
    default_binary = "qwen"
    install_hint = "the npm package @qwen-code/qwen-code (npm install -g @qwen-code/qwen-code)"

    def build_args(self, ctx: RunContext) -> list[str]:
        return ["-p", ctx.task.prompt, "--output-format", "json",
                "--approval-mode", "yolo", "--auth-type", "openai",
                "--max-session-turns", str(ctx.max_turns)]

    def build_env(self, ctx: RunContext) -> dict[str, str]:
        env = {"QWEN_USAGE_STATISTICS_ENABLED": "false", "QWEN_TELEMETRY_ENABLED": "false",
               "QWEN_CODE_SUPPRESS_YOLO_WARNING": "1"}
        if self.config.model_endpoint:
            env["OPENAI_BASE_URL"] = self.config.model_endpoint
        if self.config.model_name:
            env["OPENAI_MODEL"] = self.config.model_name
        # The local model API needs no key, but the CLI refuses to start without one.
        env["OPENAI_API_KEY"] = self.api_key() or "none"
        return env

    def parse_output(self, ctx: RunContext, outcome: ProcessOutcome) -> TaskResult:
        events = load_json_output(outcome.stdout)
        if not isinstance(events, list):
            raise OutputParseError("expected a JSON array of events")
        results = [e for e in events if isinstance(e, dict) and e.get("type") == "result"]
        if not results:
            raise OutputParseError("the event array has no element of type 'result'")
        return result_from_event(self.kind, ctx.task.task_id, results[-1], with_cost=True)
