"""The autocode runtime package, in its own virtualenv under the install folder.

One install per host: the union of the extras and pins that the components of the host's
role declare (infra/components.py), decided once, so two components asking for different
extras never take turns reinstalling it. A host whose components need no runtime gets none.
"""

from __future__ import annotations

import hashlib
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, server

from autocode.agents import AgentFactory
from autocode.config import NAME_PATTERN
from infra import components
from infra.component import Component
from infra.facts import FileText, PythonVersion, fact_once, q
from infra.operations import directory
from infra.validation import Problems, is_number
from infra.wheel import autocode_wheel

# pip in a fresh venv trusts only its own bundle; the hosts' store has the extra CAs.
PIP = "--cert /etc/ssl/certs/ca-certificates.crt --disable-pip-version-check --no-input"
_RUNTIME_DATA = {
    "logs/workers": ("autocode", "autocode", "750"),
    "financial": ("autocode", "autocode", "750"),
    "financial/transactions": ("autocode", "autocode", "750"),
    "financial/budgets": ("autocode", "autocode", "750"),
    "financial/reports": ("autocode", "autocode", "750"),
    "config/agents": ("root", "autocode", "750"),
}


def check(problems: Problems, role: str, data) -> None:
    budget = data.get("daily_budget_usd")
    if not is_number(budget) or budget <= 0:
        problems.add("daily_budget_usd", f"{budget!r} is not a positive number; set the daily "
                     "budget in USD, e.g. daily_budget_usd: 25")
    if role == "worker":
        agent = data.get("agent_type")
        if agent not in AgentFactory.AGENTS:
            problems.add("agent_type", f"unknown agent type {agent!r}; use one of: "
                         f"{', '.join(sorted(AgentFactory.AGENTS))}")
    project = data.get("project_id")
    if not (isinstance(project, str) and NAME_PATTERN.match(project)):
        problems.add("project_id", f"{project!r} is not a project id; use letters, digits, "
                     "'.', '_' and '-', e.g. acme")
    zone = data.get("timezone")
    try:
        ZoneInfo(str(zone))
    except (ZoneInfoNotFoundError, ValueError):
        problems.add("timezone", f"{zone!r} is not an IANA time zone; e.g. UTC or "
                     "Europe/Berlin")


COMPONENT = Component(
    name="runtime",
    settings={
        "project_id": "autocode",
        # The zone in which budget days start.
        "timezone": "UTC",
        "daily_budget_usd": 50.0,
    },
    role_settings={"worker": {"agent_type": "claude-code"}},
    check=check,
    data_tree={
        # 751: services with their own folder inside (Vault's audit log) pass through.
        "orchestrator": {**_RUNTIME_DATA, "logs/orchestrator": ("autocode", "autocode", "751"),
                         # The proxy writes the metered ledger in its own folder inside.
                         "financial": ("autocode", "autocode", "751")},
        "worker": {**_RUNTIME_DATA,
                   "worker-artifacts": ("autocode", "autocode", "750"),
                   "worker-artifacts/projects": ("autocode", "autocode", "750"),
                   "worker-artifacts/code": ("autocode", "autocode", "750"),
                   "worker-artifacts/results": ("autocode", "autocode", "750")},
    },
)


def venv_path() -> str:
    return f"{host.data.install_dir}/venv"


@cache
def _wheel_digest() -> str:
    return hashlib.sha256(autocode_wheel().read_bytes()).hexdigest()


def _role() -> str:
    return "orchestrator" if "orchestrator" in host.groups else "worker"


def runtime_data() -> dict:
    """The host's data, and its python3's version as `host_python` (a pin that needs a newer
    Python follows it: tasks/mitmproxy.py)."""
    return {**host.data.dict(), "host_python": fact_once(host, PythonVersion)}


def install_digest() -> str | None:
    """What this host's runtime install is made of (wheel, extras, pins): a service that
    runs from the runtime has it as an input, and restarts when it changes."""
    needs = components.runtime_needs(_role(), runtime_data())
    if needs is None:
        return None
    extras, pins = needs
    return hashlib.sha256(f"{_wheel_digest()} {list(extras)} {list(pins)}".encode()).hexdigest()


def _install() -> None:
    needs = components.runtime_needs(_role(), runtime_data())
    if needs is None:
        return
    extras, pins = needs
    venv = venv_path()
    wheel = autocode_wheel()
    dist = f"{host.data.install_dir}/dist"
    want = install_digest()
    # What is installed is recorded in the venv; a deleted or half-built venv, new
    # sources, or other extras or pins all differ from it and lead to a reinstall.
    marker = f"{venv}/.autocode-installed"
    if (host.get_fact(FileText, path=marker) or "").strip() == want:
        return
    directory(name=f"Folder {dist}", path=dist, user="root", group="root", mode="755")
    server.shell(name=f"Wheel {wheel.name}", commands=[f"rm -f {q(dist)}/autocode-*.whl"])
    files.put(name=f"Upload {wheel.name}", src=str(wheel), dest=f"{dist}/{wheel.name}",
              mode="644")
    spec = f"{dist}/{wheel.name}" + (f"[{','.join(extras)}]" if extras else "")
    server.shell(
        name="Install the autocode runtime",
        commands=[
            f"test -x {q(venv)}/bin/pip || python3 -m venv {q(venv)}",
            f"{q(venv)}/bin/pip install {PIP} --quiet --force-reinstall --no-deps {q(spec)}",
            f"{q(venv)}/bin/pip install {PIP} --quiet {q(spec)} {' '.join(q(p) for p in pins)}",
            f"echo {q(want)} > {q(marker)}",
        ],
    )


@deploy("autocode runtime")
def orchestrator() -> None:
    _install()


worker = orchestrator
