"""The lab as a small Python API, used by its command line (`python -m lab`) and by the
test fixtures alike, so neither re-implements the other:

    lab = Lab.current()             # the lab as it runs now (its worker count from state)
    lab.up(); lab.down()
    lab.hosts, lab.workers          # Machine records: names, addresses, roles
    lab.ssh("worker1", "id autocode")          # CompletedProcess
    lab.ssh_argv("worker1", ["id"])            # for exec or Popen
    lab.status()                    # {name: pid or None}
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

from . import fixture_ca, image, inventory_file, machines, network
from .config import LabConfig, Machine
from .preflight import check_root, check_tools
from .sh import LabError, run


def _nameservers() -> list[str]:
    servers = []
    for line in Path("/etc/resolv.conf").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and not parts[1].startswith("127."):
            servers.append(parts[1])
    return servers or ["9.9.9.9"]


@dataclass(frozen=True)
class Lab:
    cfg: LabConfig

    @classmethod
    def current(cls, cfg: LabConfig | None = None) -> Lab:
        """The lab described by its state file (the worker count it was brought up with)."""
        cfg = cfg or LabConfig()
        workers = cls(cfg).state().get("workers", cfg.workers)
        return cls(replace(cfg, workers=workers))

    # --- what it is ------------------------------------------------------------------
    @property
    def hosts(self) -> list[Machine]:
        """Every host, the internet fixture included."""
        return self.cfg.machines

    @property
    def deploy_hosts(self) -> list[Machine]:
        """The hosts the deploy provisions (the inventory's): orchestrator and workers."""
        return [m for m in self.cfg.machines if m.role != "internet"]

    @property
    def workers(self) -> list[Machine]:
        return [m for m in self.cfg.machines if m.role == "worker"]

    @property
    def orchestrator(self) -> Machine:
        return self.cfg.orchestrator

    @property
    def internet(self) -> Machine:
        """The fixture host standing in for the outside world."""
        return self.cfg.internet

    def machine(self, name: str) -> Machine:
        return self.cfg.machine(name)

    @property
    def internet_spare_addr(self) -> str:
        return self.cfg.internet_spare_addr

    @property
    def control_addr(self) -> str:
        """The control machine's own address on the uplink segment."""
        return self.cfg.bridge_addr

    @property
    def inventory_file(self) -> Path:
        return self.cfg.inventory_file

    def state(self) -> dict:
        try:
            return json.loads(self.cfg.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _save_state(self, state: dict) -> None:
        self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.cfg.state_file.write_text(json.dumps(state, indent=2))

    # --- lifecycle -------------------------------------------------------------------
    def up(self) -> float:
        """Build and boot every host, write the inventory; returns the seconds it took.
        Idempotent: hosts already running are left as they are."""
        cfg = self.cfg
        check_root()
        check_tools()
        state = self.state()
        if state.get("workers") not in (None, cfg.workers) and machines.container_pids(cfg):
            raise LabError(
                f"the lab is running with {state['workers']} workers, not {cfg.workers}; "
                "run `python -m lab down` first to change the number of workers"
            )
        started = time.monotonic()
        img = image.ensure_image(cfg)
        pubkey = self._ensure_ssh_key()
        mtu = network.uplink_mtu()
        network.ensure_host_side(cfg, mtu, state)
        network.ensure_switch(cfg, mtu)
        state["workers"] = cfg.workers
        self._save_state(state)
        inet = cfg.internet
        tls = fixture_ca.ensure_fixture_tls(cfg.fixture_dir,
                                            [inet.uplink_addr, inet.uplink_addr6],
                                            ["internet.lab"])
        for m in cfg.machines:
            # A host that exists but does not run was powered off: it boots cold.
            powered_off = (cfg.rootfs(m) / "etc/os-release").exists() and not \
                machines.pid_of(cfg, m)
            machines.create_rootfs(cfg, m, img, pubkey, _nameservers())
            if m.role == "internet":
                machines.install_internet_fixture(cfg, m, tls)
            network.ensure_machine_net(cfg, m, mtu)
            machines.boot(cfg, m, cold=powered_off)
        for m in cfg.machines:
            machines.wait_for_ssh(cfg, m)
        inventory_file.write_known_hosts(cfg)
        inventory_file.write(cfg)
        return time.monotonic() - started

    def down(self) -> None:
        """Remove every host, interface, namespace and firewall rule of the lab; the image,
        key and caches stay for the next `up`."""
        cfg = self.cfg
        check_root()
        state = self.state()
        machines.stop_all(cfg)
        network.remove_all(cfg)
        if "host_ip_forward" in state:
            run("sysctl", "-q", "-w", f"net.ipv4.ip_forward={state['host_ip_forward']}")
        run("rm", "-rf", str(cfg.machines_dir))
        cfg.inventory_file.unlink(missing_ok=True)
        # Vault's and Nomad's keys (kept beside the inventory) belong to storage
        # that was just removed with the hosts; kept, they would stop the next converge.
        for keys in ("vault-keys", "nomad-keys", "control-token"):
            cfg.inventory_file.with_name(f"{cfg.inventory_file.stem}.{keys}.json").unlink(
                missing_ok=True)
        # autocode-control's endpoint file and CA copy name the hosts just removed.
        for name in ("autocode-control.json", "autocode-control-ca.crt"):
            cfg.inventory_file.with_name(name).unlink(missing_ok=True)
        cfg.state_file.unlink(missing_ok=True)

    def status(self) -> dict[str, int | None]:
        return {m.name: machines.pid_of(self.cfg, m) for m in self.cfg.machines}

    def _ensure_ssh_key(self) -> str:
        key = self.cfg.ssh_key
        if not key.exists():
            key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "autocode-lab",
                "-f", str(key))
        return key.with_suffix(".pub").read_text()

    # --- reaching a host -------------------------------------------------------------
    def ssh_argv(self, host: str, command: list[str] | str) -> list[str]:
        """ssh as root to a lab host, with the lab's key and strict host key checking."""
        m = self.cfg.machine(host)
        remote = [command] if isinstance(command, str) else list(command)
        return ["ssh", "-i", str(self.cfg.ssh_key), "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={inventory_file.known_hosts_file(self.cfg)}",
                "-o", "StrictHostKeyChecking=yes", f"root@{m.ssh_addr}", *remote]

    def ssh(self, host: str, command: str, input: str | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
        """Run a shell command on a host; the caller checks returncode."""
        return subprocess.run(self.ssh_argv(host, command), capture_output=True, text=True,
                              timeout=timeout, input=input)
