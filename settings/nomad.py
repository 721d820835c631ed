"""The nomad component's settings: which runner runs the agents on the workers, and the
Nomad server and clients when it is Nomad."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import Field

from autocode.problems import Problems
from infra.inventory_file import inventory_path
from infra.settings import (
    Describe,
    HostSettings,
    Port,
    Settings,
    Version,
    private_file,
    refuse_unless,
)

RUNNERS = {
    "nomad": "agents run as the Nomad job autocode-worker (the production default)",
    "systemd": "one autocode-worker systemd unit per worker, no Nomad (the lab's choice)",
}
NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def _name(example: str):
    # The region is part of the TLS names server.<region>.nomad: a DNS label.
    return Annotated[str, refuse_unless(
        lambda v: bool(NAME.fullmatch(v)),
        lambda v: f"{v!r} is not a name of lowercase letters, digits and dashes, e.g. "
                  f"{example}"), Describe("a name of lowercase letters, digits and dashes",
                                          f"e.g. {example}")]


class Nomad(Settings):
    worker_runner: Annotated[str, refuse_unless(
        lambda v: v in RUNNERS,
        lambda v: f"{v!r} is not a worker runner; use " + "; or ".join(
            f"{name} ({what})" for name, what in RUNNERS.items())),
        Describe("a worker runner")] = "nomad"
    """How the agents run on the workers: nomad or systemd (RUNNERS)."""
    nomad_version: Annotated[Version, Describe(
        "a version", "pin one that HashiCorp's apt repository has, e.g. 1.9.7")] = "1.9.7"
    """Nomad's package version, pinned."""
    nomad_region: _name("global") = "global"
    """The region (part of the servers' and clients' TLS names)."""
    nomad_datacenter: _name("dc1") = "dc1"
    """The datacenter the clients join."""
    nomad_http_port: Port = 4646
    """The HTTP API (the control machine, the CLI on the workers)."""
    nomad_rpc_port: Port = 4647
    """RPC, which the clients dial."""
    nomad_serf_port: Port = 4648
    """Gossip between servers, on loopback (there is one)."""
    nomad_task_cores: Annotated[int, Field(ge=1, le=256), Describe(
        "a number of cores", "give the whole CPU cores each agent reserves, e.g. 4")] = 4
    """What each agent reserves on its worker: CPU cores."""
    nomad_task_memory_mb: Annotated[int, Field(ge=128), Describe(
        "a memory size", "give each agent's memory in MB, at least 128, e.g. 2048")] = 2048
    """And memory, in MB."""
    nomad_keys_file: Annotated[str | None, refuse_unless(
        lambda v: v is None or bool(v),
        lambda v: f"{v!r} is not a path on the control machine")] = None
    """Control-machine path of the keys file; default: beside the inventory file."""
    nomad_api_url: Annotated[str | None, refuse_unless(
        lambda v: v is None or v.startswith(("https://", "http://")),
        lambda v: f"{v!r} is not a URL; e.g. https://10.0.0.2:4646, or leave it "
                  "unset")] = None
    """How the control machine reaches the API; default <scheme>://<orchestrator>:http."""

    @property
    def enabled(self) -> bool:
        return self.worker_runner == "nomad"

    def keys_file(self) -> Path:
        if self.nomad_keys_file:
            return Path(self.nomad_keys_file).expanduser()
        inv = inventory_path()
        return inv.with_name(f"{inv.stem}.nomad-keys.json")

    def ports(self) -> list[int]:
        """What workers (and the management networks) reach: the API and RPC."""
        return [self.nomad_http_port, self.nomad_rpc_port] if self.enabled else []

    def rules(self, problems: Problems, host: HostSettings) -> None:
        ports = [self.nomad_http_port, self.nomad_rpc_port, self.nomad_serf_port]
        if len(set(ports)) != len(ports):
            problems.add("nomad_http_port", "nomad_http_port, nomad_rpc_port and "
                         f"nomad_serf_port must differ; they are {ports}")
        if host.role == "orchestrator" and self.enabled and self.keys_file().exists():
            private_file(problems, "nomad_keys_file", str(self.keys_file()))
