"""The orchestrator: model serving, secrets, logs, the egress proxy, the Nomad server."""

from tasks import base

TASKS = [base.apply]


def apply() -> None:
    for task in TASKS:
        task()
