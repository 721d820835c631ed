"""The runtime component's settings: the platform's identity (project, time zone, daily
budget, each worker's agent), and the runtime install every component that runs from it
names."""

from __future__ import annotations

import hashlib
from functools import cache
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field

from autocode.agents import AgentFactory
from autocode.config import NAME_PATTERN
from infra.components import Catalogue
from infra.facts import PythonVersion, fact_once
from infra.settings import Describe, For, Settings, refuse_unless
from infra.wheel import autocode_wheel

# pip in a fresh venv trusts only its own bundle; the hosts' store has the extra CAs.
PIP = "--cert /etc/ssl/certs/ca-certificates.crt --disable-pip-version-check --no-input"


def _is_zone(value: str) -> bool:
    try:
        ZoneInfo(value)
        return True
    except (ZoneInfoNotFoundError, ValueError):
        return False


AgentType = Annotated[str, refuse_unless(
    lambda v: v in AgentFactory.AGENTS,
    lambda v: f"unknown agent type {v!r}; use one of: {', '.join(sorted(AgentFactory.AGENTS))}"
), Describe("an agent type", f"use one of: {', '.join(sorted(AgentFactory.AGENTS))}")]


class Runtime(Settings):
    project_id: Annotated[str, refuse_unless(
        lambda v: bool(NAME_PATTERN.match(v)),
        lambda v: f"{v!r} is not a project id; use letters, digits, '.', '_' and '-', "
                  "e.g. acme"), Describe("a project id", "use letters, digits, '.', '_' and "
                                         "'-', e.g. acme")] = "autocode"
    """The project every log line and ledger row is filed under."""
    timezone: Annotated[str, refuse_unless(
        _is_zone, lambda v: f"{v!r} is not an IANA time zone; e.g. UTC or Europe/Berlin"),
        Describe("an IANA time zone", "e.g. UTC or Europe/Berlin")] = "UTC"
    """The zone in which budget days start."""
    daily_budget_usd: Annotated[int | float, Field(gt=0), Describe(
        "a positive number", "set the daily budget in USD, e.g. daily_budget_usd: 25")] = 50.0
    """Each worker's daily budget in USD (its agent's and, at the proxy, its LLM calls')."""
    agent_type: Annotated[AgentType, For("worker")] = "claude-code"
    """The coding agent a worker runs."""


@cache
def wheel_digest() -> str:
    return hashlib.sha256(autocode_wheel().read_bytes()).hexdigest()


def install_digest(needs: tuple[tuple[str, ...], tuple[str, ...]] | None) -> str | None:
    """What a host's runtime install is made of (wheel, extras, pins), from the
    catalogue's `runtime_needs`: a service that runs from the runtime has it as an input,
    and restarts when it changes."""
    if needs is None:
        return None
    extras, pins = needs
    return hashlib.sha256(f"{wheel_digest()} {list(extras)} {list(pins)}".encode()).hexdigest()


def runtime_needs(host, catalogue: Catalogue):
    """(extras, pins) of a pyinfra host's runtime install (None: it gets none), its python3
    read once: a pin that needs a newer Python follows it (settings/mitmproxy.py)."""
    role = "orchestrator" if "orchestrator" in host.groups else "worker"
    return catalogue.runtime_needs(role, host.data.dict(), fact_once(host, PythonVersion))


def host_install_digest(host, catalogue: Catalogue) -> str | None:
    """That install's digest: a restart input of every service running from the runtime."""
    return install_digest(runtime_needs(host, catalogue))
