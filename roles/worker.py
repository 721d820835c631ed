"""A worker: a Nomad client running one coding agent, all egress via the orchestrator."""

from tasks import base

TASKS = [base.apply]


def apply() -> None:
    for task in TASKS:
        task()
