"""Lab topology and paths: one place for every name and address the lab uses."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from .sh import LabError

PREFIX = "aclab"  # every interface, namespace and firewall chain the lab makes starts with it

DEFAULT_STATE_DIR = Path(os.environ.get("AUTOCODE_LAB_DIR", "/var/lib/autocode-lab"))
DEFAULT_UPLINK = "10.237.0.0/24"
DEFAULT_WORKER_NET = "10.237.1.0/24"
DEFAULT_UPLINK6 = "fd37:ac::/64"
DEFAULT_WORKER_NET6 = "fd37:ac:1::/64"
MIRROR = os.environ.get("AUTOCODE_LAB_MIRROR", "http://deb.debian.org/debian")
# The Debian release of every lab host: bookworm (12) by default, trixie (13) the other
# one tested (closer to current Ubuntu LTS: Python 3.13, a newer systemd).
SUITES = ("bookworm", "trixie")
SUITE = os.environ.get("AUTOCODE_LAB_SUITE", "bookworm")


@dataclass(frozen=True)
class Machine:
    name: str
    short: str  # fits interface names (IFNAMSIZ is 16 with the NUL)
    role: str  # orchestrator | worker | internet
    uplink_addr: str | None = None  # on the uplink segment
    worker_addr: str | None = None  # on the worker segment
    uplink_addr6: str | None = None
    worker_addr6: str | None = None

    @property
    def netns(self) -> str:
        return f"{PREFIX}-{self.short}"

    @property
    def ssh_addr(self) -> str:
        return self.uplink_addr or self.worker_addr  # type: ignore[return-value]


@dataclass(frozen=True)
class LabConfig:
    workers: int = 4
    state_dir: Path = DEFAULT_STATE_DIR
    uplink: str = DEFAULT_UPLINK
    worker_net: str = DEFAULT_WORKER_NET
    uplink6: str = DEFAULT_UPLINK6
    worker_net6: str = DEFAULT_WORKER_NET6
    extra_ca_certs: tuple[Path, ...] = field(default_factory=tuple)
    suite: str = SUITE

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise LabError(f"suite {self.suite!r} is not one the lab builds; use one of "
                           f"{', '.join(SUITES)} (AUTOCODE_LAB_SUITE or --suite)")

    # --- addresses -------------------------------------------------------------------
    def _host(self, net: str, index: int) -> str:
        return str(ipaddress.ip_network(net)[index])

    @property
    def bridge_addr(self) -> str:
        return self._host(self.uplink, 1)

    @property
    def bridge_addr6(self) -> str:
        return self._host(self.uplink6, 1)

    @property
    def uplink_prefixlen(self) -> int:
        return ipaddress.ip_network(self.uplink).prefixlen

    @property
    def worker_prefixlen(self) -> int:
        return ipaddress.ip_network(self.worker_net).prefixlen

    @property
    def orchestrator(self) -> Machine:
        return Machine(
            name="orchestrator", short="orch", role="orchestrator",
            uplink_addr=self._host(self.uplink, 10), worker_addr=self._host(self.worker_net, 1),
            uplink_addr6=self._host(self.uplink6, 0x10),
            worker_addr6=self._host(self.worker_net6, 1),
        )

    @property
    def internet(self) -> Machine:
        return Machine(
            name="internet", short="inet", role="internet",
            uplink_addr=self._host(self.uplink, 100),
            uplink_addr6=self._host(self.uplink6, 0x100),
        )

    @property
    def internet_spare_addr(self) -> str:
        """A second address of the internet host, where nothing listens unless a test
        starts its own listener there (ports 80 and 443 at its main address are the
        fixture's)."""
        return self._host(self.uplink, 101)

    def worker(self, n: int) -> Machine:
        return Machine(
            name=f"worker{n}", short=f"w{n}", role="worker",
            worker_addr=self._host(self.worker_net, 10 + n),
            worker_addr6=self._host(self.worker_net6, 0x10 + n),
        )

    @property
    def machines(self) -> list[Machine]:
        return [self.orchestrator, self.internet] + [
            self.worker(n) for n in range(1, self.workers + 1)
        ]

    def machine(self, name: str) -> Machine:
        for m in self.machines:
            if m.name == name:
                return m
        names = ", ".join(m.name for m in self.machines)
        raise LabError(f"no lab host named {name!r}; the lab has: {names}")

    # --- interface names -------------------------------------------------------------
    uplink_bridge = f"{PREFIX}-up"
    worker_bridge = "br0"  # inside the switch namespace, so it cannot clash with the host's
    switch_netns = f"{PREFIX}-wseg"
    nat_chain = "AUTOCODE-LAB"

    # --- paths -----------------------------------------------------------------------
    @property
    def images_dir(self) -> Path:
        return self.state_dir / "images"

    @property
    def machines_dir(self) -> Path:
        return self.state_dir / "machines"

    @property
    def ssh_key(self) -> Path:
        return self.state_dir / "ssh" / "id_ed25519"

    @property
    def inventory_file(self) -> Path:
        return self.state_dir / "inventory.yaml"

    @property
    def fixture_dir(self) -> Path:
        return self.state_dir / "fixture"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    def rootfs(self, m: Machine) -> Path:
        return self.machines_dir / m.name / "rootfs"

    def pidfile(self, m: Machine) -> Path:
        return self.machines_dir / m.name / "nspawn.pid"

    def logfile(self, m: Machine) -> Path:
        return self.machines_dir / m.name / "nspawn.log"


def default_extra_ca_certs() -> tuple[Path, ...]:
    """The control machine's own extra CAs (e.g. an intercepting egress proxy's)."""
    return tuple(sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt")))
