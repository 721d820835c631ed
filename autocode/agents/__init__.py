"""Swappable coding agents driven through their headless command-line tools."""

from .aider import AiderAgent
from .base import AgentBinaryNotFoundError, CodingAgent, HeadlessCliAgent, OutputParseError
from .claude_code import ClaudeCodeAgent
from .cursor_cli import CursorCliAgent
from .factory import AgentFactory
from .qwen_coder import QwenCoderAgent
from .types import AgentConfig, Task, TaskResult

__all__ = [
    "AgentBinaryNotFoundError",
    "AgentConfig",
    "AgentFactory",
    "AiderAgent",
    "ClaudeCodeAgent",
    "CodingAgent",
    "CursorCliAgent",
    "HeadlessCliAgent",
    "OutputParseError",
    "QwenCoderAgent",
    "Task",
    "TaskResult",
]
