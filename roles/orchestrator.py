"""The orchestrator: model serving, secrets, logs, the egress proxy, the Nomad server."""

from tasks import base, dns, mitmproxy, network

TASKS = [base.apply, network.orchestrator, dns.orchestrator, mitmproxy.orchestrator]


def apply() -> None:
    for task in TASKS:
        task()
