"""A worker: runs coding agents, with all egress through the orchestrator."""

from tasks import base, dns, mitmproxy, network, platform_ca, runtime, vault

# Egress and DNS before base: once the orchestrator's firewall is loaded, they are the
# only way a worker reaches a package mirror.
COMPONENTS = [network, dns, base, platform_ca, runtime, mitmproxy, vault]


def apply() -> None:
    for component in COMPONENTS:
        component.worker()
