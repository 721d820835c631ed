"""The DNS component's settings: the forwarder the workers resolve through."""

from __future__ import annotations

from typing import Annotated

from autocode.problems import Problems, string_list
from infra.settings import Port, Settings, checked, ip_address


def _upstreams(problems: Problems, field: str, value) -> None:
    for server in string_list(problems, field, value, "[9.9.9.9]"):
        if not ip_address(server):
            problems.add(field, f"{server!r} is not an IP address", "list the upstream "
                         "resolvers' addresses, e.g. [9.9.9.9, 1.1.1.1]")


class Dns(Settings):
    dns_port: Port = 53
    """The forwarder's port on the orchestrator, UDP and TCP (large answers)."""
    dns_upstreams: Annotated[list, checked(_upstreams)] = []
    """Upstream resolvers' addresses for the forwarder; empty: its resolv.conf's."""

    def query_log_dir(self, data_root: str) -> str:
        return f"{data_root}/logs/traffic/dns"
