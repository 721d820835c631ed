"""What the inventory file itself gives each host beside settings (infra/inventory_file.py):
its SSH address, and where it reaches the orchestrator."""

from __future__ import annotations

from infra.settings import Settings


class Addresses(Settings):
    """Not settings of a component: set by the inventory file for every host."""

    ssh_hostname: str | None = None
    """The address the deploy reaches the host at (the inventory's `address`)."""
    orchestrator_address: str | None = None
    """The orchestrator's address on the workers' network (its `worker_address`, else its
    `address`): the workers' gateway, DNS server and proxy."""
    worker_address: str | None = None
    """On the orchestrator: its address on the workers' network, when the inventory gives
    one."""
    ssh_port: int = 22
    """The SSH port the deploy uses."""

    def gateway(self) -> str:
        """Where workers reach the orchestrator (on the orchestrator: its own address on the
        workers' network)."""
        return str(self.worker_address or self.orchestrator_address or self.ssh_hostname)
