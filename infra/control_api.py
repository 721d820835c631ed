"""What the deploy's API clients (Vault's, Nomad's) share: they talk from the control
machine, inside pyinfra operations, to services the deploy itself runs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

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
