"""A worker: runs coding agents, with all egress through the orchestrator."""

from infra.components import Catalogue
from tasks import (
    agent_clis,
    backup,
    base,
    dns,
    log_forwarding,
    mitmproxy,
    network,
    nomad,
    platform_ca,
    runtime,
    vault,
    worker,
)

# Egress and DNS before base: once the orchestrator's firewall is loaded, they are the
# only way a worker reaches a package mirror. The proxy's CA before the runtime, whose pip
# install goes through the proxy. The agent last: its config names Vault and the CLIs,
# and with worker_runner: nomad the Nomad client (and not its unit) runs it. Its logs'
# forwarder after it, reading the folder it writes; the backup timer last.
COMPONENTS = [network, dns, base, platform_ca, mitmproxy, runtime, vault, nomad, agent_clis,
              worker, log_forwarding, backup]


def apply(catalogue: Catalogue) -> None:
    for component in COMPONENTS:
        component.worker(catalogue)
