"""The orchestrator: the workers' gateway and egress proxy, their DNS forwarder, secrets,
logs, the Nomad server and model serving."""

from infra.components import Catalogue
from tasks import (
    backup,
    base,
    control,
    dns,
    elasticsearch,
    filebeat,
    log_forwarding,
    metering,
    mitmproxy,
    network,
    nomad,
    platform_ca,
    runtime,
    serving,
    vault,
)

# Base first: every later component relies on its accounts and folders; the runtime
# before the proxy, which runs from it; Elasticsearch's data streams before the traffic
# shipper writes to them; the log receiver and Filebeat last, once the services whose
# logs they carry are there; the backup timer once what it backs up exists.
COMPONENTS = [base, network, dns, platform_ca, runtime, elasticsearch, mitmproxy, metering,
              vault, nomad, serving, control, log_forwarding, filebeat, backup]


def apply(catalogue: Catalogue) -> None:
    for component in COMPONENTS:
        component.orchestrator(catalogue)
