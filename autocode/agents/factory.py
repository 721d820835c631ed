"""Agent factory: one place that maps an agent type name to its class."""

from __future__ import annotations

from typing import ClassVar

from autocode.budget import BudgetLedger

from .aider import AiderAgent
from .base import HeadlessCliAgent
from .claude_code import ClaudeCodeAgent
from .cursor_cli import CursorCliAgent
from .qwen_coder import QwenCoderAgent
from .types import AgentConfig


class AgentFactory:
    AGENTS: ClassVar[dict[str, type[HeadlessCliAgent]]] = {
        "claude-code": ClaudeCodeAgent,
        "aider": AiderAgent,
        "qwen-coder": QwenCoderAgent,
        "cursor-cli": CursorCliAgent,
    }

    @classmethod
    def create_agent(
        cls, kind: str, config: AgentConfig, ledger: BudgetLedger | None = None
    ) -> HeadlessCliAgent:
        try:
            agent_class = cls.AGENTS[kind]
        except KeyError:
            raise ValueError(
                f"unknown agent type {kind!r}; valid types: {', '.join(sorted(cls.AGENTS))}"
            ) from None
        return agent_class(config, ledger)
