"""The network component's settings: the workers' network, which the orchestrator is the
gateway of, and who may reach the orchestrator's management services."""

from __future__ import annotations

from typing import Annotated

from autocode.problems import Problems, ipv4_networks, network
from infra.settings import HostSettings, Settings, checked

NetworkText = Annotated[str | None, checked(lambda p, f, v: v is None or network(p, f, v))]


class Network(Settings):
    worker_network: NetworkText = None
    """The workers' IPv4 network (address/prefix); required."""
    worker_network6: NetworkText = None
    """The workers' IPv6 network, if they have one."""
    management_networks: Annotated[list[str] | None, checked(
        lambda p, f, v: v is None or ipv4_networks(
            p, f, v, "leave it unset for the control machine only"))] = None
    """Who may reach the orchestrator's management services (the Vault API): IPv4
    networks; unset, the control machine's own address as the orchestrator sees its SSH
    connection."""

    def rules(self, problems: Problems, host: HostSettings) -> None:
        if self.worker_network is None:
            problems.add("worker_network", "missing; the firewall needs the workers' network",
                         "set it under data:, e.g. worker_network: 10.0.1.0/24")
