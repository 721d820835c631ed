"""Roles: which components each kind of host gets, in order (roles/orchestrator.py,
roles/worker.py), and the catalogue of both that the deploy's collectors read
(infra/components.py: group data, accounts, ports, the validation pass)."""

from __future__ import annotations

from infra.components import Catalogue

from . import orchestrator, worker

# Read at each use, so a test may change a role's list.
CATALOGUE = Catalogue({
    "orchestrator": lambda: [m.COMPONENT for m in orchestrator.COMPONENTS],
    "worker": lambda: [m.COMPONENT for m in worker.COMPONENTS],
})
