"""The autocode runtime package, in its own virtualenv under the install folder.

One install per host: the union of the extras and pins that the components of the host's
role declare (infra/components.py), decided once, so two components asking for different
extras never take turns reinstalling it. A host whose components need no runtime gets none.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, server

from infra.component import Component
from infra.components import Catalogue
from infra.facts import FileText, q
from infra.operations import directory
from infra.wheel import autocode_wheel
from settings.base import Base
from settings.runtime import PIP, Runtime, install_digest, runtime_needs

_RUNTIME_DATA = {
    "logs/workers": ("autocode", "autocode", "750"),
    "financial": ("autocode", "autocode", "750"),
    "financial/transactions": ("autocode", "autocode", "750"),
    "financial/budgets": ("autocode", "autocode", "750"),
    "financial/reports": ("autocode", "autocode", "750"),
    "config/agents": ("root", "autocode", "750"),
}

COMPONENT = Component(
    name="runtime",
    settings=Runtime,
    data_tree={
        # 751: services with their own folder inside (Vault's audit log) pass through.
        "orchestrator": {**_RUNTIME_DATA, "logs/orchestrator": ("autocode", "autocode", "751"),
                         # The proxy writes the metered ledger in its own folder inside.
                         "financial": ("autocode", "autocode", "751")},
        "worker": {**_RUNTIME_DATA,
                   # 751: an agent under its own account passes through to its work tree.
                   "worker-artifacts": ("autocode", "autocode", "751"),
                   "worker-artifacts/projects": ("autocode", "autocode", "750"),
                   "worker-artifacts/code": ("autocode", "autocode", "750"),
                   "worker-artifacts/results": ("autocode", "autocode", "750")},
    },
)


@deploy("autocode runtime")
def orchestrator(catalogue: Catalogue) -> None:
    needs = runtime_needs(host, catalogue)
    if needs is None:
        return
    extras, pins = needs
    base = Base.of(host)
    venv = base.runtime_venv
    wheel = autocode_wheel()
    dist = f"{base.install_dir}/dist"
    want = install_digest(needs)
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


worker = orchestrator
