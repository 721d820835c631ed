"""What the deploy's API clients (Vault's, Nomad's, Elasticsearch's) share: they talk from
the control machine, inside pyinfra operations, to services the deploy itself runs. The
HTTP layer itself is infra/http_api.py."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pyinfra.api import OperationError

from .facts import FileText, fact_once, q

T = TypeVar("T")


def per_stage(state, name: str, make: Callable[[], T]) -> T:
    """One object per run and stage (pyinfra plans, then executes, and runs each operation's
    generator again at execution: a session must start afresh there)."""
    cache = state.__dict__.setdefault(f"_autocode_{name}", {})
    if state.current_stage not in cache:
        cache[state.current_stage] = make()
    return cache[state.current_stage]


def reported(api_error: type[Exception], setup_error: type[Exception]):
    """An API error in an operation becomes the operation's failure, with the service's
    message (never a body or a token) and without a traceback."""

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                yield from func(*args, **kwargs)
            except api_error as exc:
                raise setup_error(str(exc)) from None

        return wrapper

    return decorate


@dataclass
class ServiceSession:
    """What a run knows of one service on the orchestrator: where its API is, the platform
    CA to verify it by, and the keys file.

    The CA is the orchestrator's file `ca_path` (None: the service has no TLS): read as a
    fact when planning (`plan_time_ca`), and again over the connection when an operation
    runs (`ca_at_run_time`), since the apply may have just made it."""

    url: str
    keys: Any
    orchestrator: Any  # the pyinfra host
    ca_path: str | None
    ca_pem: str | None = None

    def plan_time_ca(self) -> bool:
        """The CA read as a fact of the orchestrator (once per run); False while the
        orchestrator has none yet. True without TLS."""
        if self.ca_path and self.ca_pem is None:
            self.ca_pem = fact_once(self.orchestrator, FileText, path=self.ca_path)
        return not self.ca_path or bool(self.ca_pem)

    def ca_at_run_time(self) -> None:
        if not self.ca_path:
            return
        ok, output = self.orchestrator.run_shell_command(f"cat -- {q(self.ca_path)}")
        text = "\n".join(output.stdout_lines).strip()
        if not ok or "BEGIN CERTIFICATE" not in text:
            raise OperationError(f"could not read the platform CA {self.ca_path} on "
                                 f"{self.orchestrator.name}")
        self.ca_pem = text + "\n"
