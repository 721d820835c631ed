"""A worker: runs coding agents, with all egress through the orchestrator."""

from tasks import base, dns, mitmproxy, network, platform_ca, runtime, vault

# Egress and DNS before base: once the orchestrator's firewall is loaded, they are the
# only way a worker reaches a package mirror. The proxy's CA before the runtime, whose pip
# install goes through the proxy.
COMPONENTS = [network, dns, base, platform_ca, mitmproxy, runtime, vault]


def apply() -> None:
    for component in COMPONENTS:
        component.worker()
