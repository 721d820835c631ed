"""`python -m lab up|down|status|ssh`: the lab's command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from . import fixture_ca, image, inventory_file, machines, network
from .config import LabConfig, default_extra_ca_certs
from .preflight import check_root, check_tools
from .sh import LabError, run


def _load_state(cfg: LabConfig) -> dict:
    try:
        return json.loads(cfg.state_file.read_text())
    except (OSError, ValueError):
        return {}


def _save_state(cfg: LabConfig, state: dict) -> None:
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    cfg.state_file.write_text(json.dumps(state, indent=2))


def _nameservers() -> list[str]:
    servers = []
    for line in Path("/etc/resolv.conf").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver" and not parts[1].startswith("127."):
            servers.append(parts[1])
    return servers or ["9.9.9.9"]


def _ensure_ssh_key(cfg: LabConfig) -> str:
    if not cfg.ssh_key.exists():
        cfg.ssh_key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "autocode-lab",
            "-f", str(cfg.ssh_key))
    return cfg.ssh_key.with_suffix(".pub").read_text()


def up(cfg: LabConfig) -> None:
    check_root()
    check_tools()
    state = _load_state(cfg)
    if state.get("workers") not in (None, cfg.workers) and machines.container_pids(cfg):
        raise LabError(
            f"the lab is running with {state['workers']} workers, not {cfg.workers}; "
            "run `python -m lab down` first to change the number of workers"
        )
    started = time.monotonic()
    img = image.ensure_image(cfg)
    pubkey = _ensure_ssh_key(cfg)
    mtu = network.uplink_mtu()
    network.ensure_host_side(cfg, mtu, state)
    network.ensure_switch(cfg, mtu)
    state["workers"] = cfg.workers
    _save_state(cfg, state)
    inet = cfg.internet
    tls = fixture_ca.ensure_fixture_tls(cfg.fixture_dir, [inet.uplink_addr, inet.uplink_addr6],
                                        ["internet.lab"])
    for m in cfg.machines:
        machines.create_rootfs(cfg, m, img, pubkey, _nameservers())
        if m.role == "internet":
            machines.install_internet_fixture(cfg, m, tls)
        network.ensure_machine_net(cfg, m, mtu)
        machines.boot(cfg, m)
    for m in cfg.machines:
        machines.wait_for_ssh(cfg, m)
    inventory_file.write_known_hosts(cfg)
    path = inventory_file.write(cfg)
    print(f"lab up: {len(cfg.machines)} hosts in {time.monotonic() - started:.0f}s; "
          f"inventory at {path}")


def down(cfg: LabConfig) -> None:
    check_root()
    state = _load_state(cfg)
    machines.stop_all(cfg)
    network.remove_all(cfg)
    if "host_ip_forward" in state:
        run("sysctl", "-q", "-w", f"net.ipv4.ip_forward={state['host_ip_forward']}")
    # Hosts are thrown away; the image, key and cache stay for the next `up`.
    run("rm", "-rf", str(cfg.machines_dir))
    cfg.inventory_file.unlink(missing_ok=True)
    cfg.state_file.unlink(missing_ok=True)
    print("lab down: no container, namespace, interface or firewall rule of the lab is left")


def status(cfg: LabConfig) -> int:
    state = _load_state(cfg)
    workers = state.get("workers", cfg.workers)
    cfg = replace(cfg, workers=workers)
    running = 0
    for m in cfg.machines:
        pid = machines.pid_of(cfg, m)
        running += bool(pid)
        print(f"{m.name:14} {m.ssh_addr:15} {'running pid ' + str(pid) if pid else 'stopped'}")
    return 0 if running == len(cfg.machines) else 3


def ssh(cfg: LabConfig, host: str, command: list[str]) -> int:
    state = _load_state(cfg)
    cfg = replace(cfg, workers=state.get("workers", cfg.workers))
    m = cfg.machine(host)
    argv = [
        "ssh", "-i", str(cfg.ssh_key), "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={inventory_file.known_hosts_file(cfg)}",
        "-o", "StrictHostKeyChecking=yes", f"root@{m.ssh_addr}", *command,
    ]
    os.execvp("ssh", argv)
    return 0  # not reached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="build and boot the lab hosts, write the inventory")
    p_up.add_argument("--workers", type=int, default=4, help="number of workers (default 4)")
    p_up.add_argument("--extra-ca", action="append", type=Path, default=None, metavar="FILE",
                      help="CA certificate the hosts should trust (repeatable); default: "
                      "those in /usr/local/share/ca-certificates")
    sub.add_parser("down", help="remove every host, interface and firewall rule of the lab")
    sub.add_parser("status", help="show the hosts and whether they run")
    p_ssh = sub.add_parser("ssh", help="open a shell or run a command on a lab host")
    p_ssh.add_argument("host")
    p_ssh.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    cfg = LabConfig()
    try:
        if args.cmd == "up":
            if not 1 <= args.workers <= 40:
                raise LabError("--workers must be between 1 and 40")
            extra = tuple(args.extra_ca) if args.extra_ca is not None else default_extra_ca_certs()
            for cert in extra:
                if not cert.is_file():
                    raise LabError(f"--extra-ca {cert}: no such file")
            up(replace(cfg, workers=args.workers, extra_ca_certs=extra))
        elif args.cmd == "down":
            down(cfg)
        elif args.cmd == "status":
            return status(cfg)
        elif args.cmd == "ssh":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            return ssh(cfg, args.host, command)
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
