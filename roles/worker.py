"""A worker: a Nomad client running one coding agent, all egress via the orchestrator."""

from tasks import base, dns, mitmproxy, network

# Egress and DNS before base: once the orchestrator's firewall is loaded, they are the
# only way a worker reaches a package mirror.
TASKS = [network.worker, dns.worker, base.apply, mitmproxy.worker]


def apply() -> None:
    for task in TASKS:
        task()
