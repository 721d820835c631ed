"""Aider, driven headless: `aider --message PROMPT --yes-always ...`."""

from __future__ import annotations

import json
from decimal import Decimal

from .base import SUMMARY_MAX_CHARS, HeadlessCliAgent, OutputParseError, RunContext
from .process import ProcessOutcome
from .types import AGENT_REPORTED, FAILED, SUCCEEDED, TaskResult

ANALYTICS_LOG_NAME = "aider-analytics.jsonl"
MODEL_METADATA_NAME = "aider-model-metadata.json"
CHAT_HISTORY_NAME = "aider-chat-history.md"
INPUT_HISTORY_NAME = "aider-input-history"


class AiderAgent(HeadlessCliAgent):
    """Aider against the orchestrator's OpenAI-compatible model API
    (--model openai/<name>, --openai-api-base). Aider prints free text, so cost and tokens
    come from its --analytics-log: one JSON object per line, and each `message_send` event
    carries prompt_tokens, completion_tokens and cost for one model call. Aider has no
    budget flag; the worker's budget check before each task is the cap.

    Run headless without phoning out or touching the repository beyond the task: the
    model's metadata comes from a file written per run (else Aider fetches litellm's price
    list from GitHub on every start; LITELLM_LOCAL_MODEL_COST_MAP keeps litellm's own copy
    local), chat and input histories go to the run folder, .gitignore is left alone, URLs in
    the prompt are not fetched, and no release notes, model warnings or TTY formatting."""

    kind = "aider"
    default_binary = "aider"
    install_hint = "the PyPI package aider-chat (pip install aider-chat)"

    def _analytics_log(self, ctx: RunContext):
        return ctx.run_dir / ANALYTICS_LOG_NAME

    def build_args(self, ctx: RunContext) -> list[str]:
        log = self._analytics_log(ctx)
        log.unlink(missing_ok=True)  # a re-run must not count an earlier run's events
        args = ["--message", ctx.task.prompt, "--yes-always", "--no-auto-commits",
                "--no-check-update", "--analytics-disable", "--analytics-log", str(log),
                "--no-gitignore", "--no-show-release-notes", "--no-show-model-warnings",
                "--no-detect-urls", "--no-pretty", "--no-fancy-input",
                "--chat-history-file", str(ctx.run_dir / CHAT_HISTORY_NAME),
                "--input-history-file", str(ctx.run_dir / INPUT_HISTORY_NAME)]
        if self.config.model_name:
            model = f"openai/{self.config.model_name}"
            metadata = ctx.run_dir / MODEL_METADATA_NAME
            # Prices unknown here (0): the spend of a local model is known from metering.
            metadata.write_text(json.dumps({model: {
                "litellm_provider": "openai", "mode": "chat",
                "max_input_tokens": 131072, "max_output_tokens": 8192, "max_tokens": 8192,
                "input_cost_per_token": 0.0, "output_cost_per_token": 0.0}}, indent=2))
            args += ["--model", model, "--model-metadata-file", str(metadata)]
        if self.config.model_endpoint:
            args += ["--openai-api-base", self.config.model_endpoint]
        return args

    def build_env(self, ctx: RunContext) -> dict[str, str]:
        # The key goes through the environment, never argv (visible in `ps`).
        return {"OPENAI_API_KEY": self.api_key() or "none",
                "LITELLM_LOCAL_MODEL_COST_MAP": "True"}

    def parse_output(self, ctx: RunContext, outcome: ProcessOutcome) -> TaskResult:
        log = self._analytics_log(ctx)
        if not log.is_file():
            raise OutputParseError(f"aider wrote no analytics log at {log}")
        cost, prompt_tokens, completion_tokens, sends = Decimal(0), 0, 0, 0
        for number, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line, parse_float=Decimal)
            except json.JSONDecodeError:
                raise OutputParseError(f"analytics log line {number} is not JSON") from None
            if not isinstance(event, dict) or event.get("event") != "message_send":
                continue
            props = event.get("properties") or {}
            try:
                cost += Decimal(str(props.get("cost", 0)))
                prompt_tokens += int(props.get("prompt_tokens", 0))
                completion_tokens += int(props.get("completion_tokens", 0))
            except (ArithmeticError, TypeError, ValueError):
                raise OutputParseError(f"analytics log line {number} has bad figures") from None
            sends += 1
        text = outcome.stdout.decode("utf-8", errors="replace").strip()
        # Aider exits 0 even when every model call failed (e.g. a TLS or connection error,
        # which it retries and then prints); with --message it always makes one call.
        ok = outcome.returncode == 0 and sends > 0
        return TaskResult(
            ctx.task.task_id, self.kind, SUCCEEDED if ok else FAILED,
            error=None if ok or outcome.returncode != 0 else
            f"aider made no successful model call; output tail: {text[-500:]}",
            summary=text[-SUMMARY_MAX_CHARS:], cost_usd=cost, cost_source=AGENT_REPORTED,
            input_tokens=prompt_tokens, output_tokens=completion_tokens, num_turns=sends,
            details={"analytics_log": str(log), "message_sends": sends},
        )
