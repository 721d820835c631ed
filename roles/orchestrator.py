"""The orchestrator: the workers' gateway and egress proxy, their DNS forwarder.

Model serving and logs are components still to come (README: "What is deployed
today")."""

from tasks import base, dns, metering, mitmproxy, network, nomad, platform_ca, runtime, vault

# Base first: every later component relies on its accounts and folders; the runtime
# before the proxy, which runs from it.
COMPONENTS = [base, network, dns, platform_ca, runtime, mitmproxy, metering, vault, nomad]


def apply() -> None:
    for component in COMPONENTS:
        component.orchestrator()
