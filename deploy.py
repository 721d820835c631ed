"""Entry point: `pyinfra inventory.py deploy.py`. Applies each host's role.

inventory.py has validated every host before pyinfra connected; this re-checks the data
pyinfra actually merged (group data + inventory + any --data overrides) for this host.
"""

import sys

from pyinfra import host

from infra.operations import barrier
from roles import CATALOGUE, orchestrator, worker

_role = "orchestrator" if "orchestrator" in host.groups else (
    "worker" if "workers" in host.groups else None)
if _role is None:
    print(f"{host.name}: in neither the 'orchestrator' nor the 'workers' group; "
          "use inventory.py as the inventory", file=sys.stderr)
    raise SystemExit(2)

_problems = CATALOGUE.check_host(host.name, _role, host.data.dict())
if _problems:
    print("\n".join(_problems), file=sys.stderr)
    raise SystemExit(2)

if _role == "orchestrator":
    orchestrator.apply(CATALOGUE)
# Workers reach package mirrors, DNS and everything else only through the orchestrator's
# proxy and forwarder: those must be up before any worker operation runs.
barrier(name="Orchestrator ready", description="the orchestrator's services are up")
if _role == "worker":
    worker.apply(CATALOGUE)
