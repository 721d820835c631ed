"""Lab machines: a copy of the image per host, booted with systemd-nspawn.

There is no systemd on the control machine to supervise containers, so the lab keeps a
pid file per host and, for teardown after a crash, finds stray container processes by
the root directory they run in.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .config import PREFIX, LabConfig, Machine
from .network import reset_for_cold_boot
from .sh import LabError, run

FIXTURE_SERVER = Path(__file__).resolve().parent / "fixtures" / "internet_server.py"
# Imported by internet_server.py from its own folder: the LLM API under /v1.
FIXTURE_MODULES = (Path(__file__).resolve().parent / "fixtures" / "llm_api.py",)
FIXTURE_UNIT = """\
[Unit]
Description=lab internet fixture: HTTP, HTTPS (with an LLM API), TCP, UDP and DNS servers
After=network.target

[Service]
ExecStart=/usr/bin/python3 /opt/lab-internet/internet_server.py \\
    --bind {answer} --bind {answer6} --http-port 80 --https-port 443 \\
    --cert /opt/lab-internet/server.crt --key /opt/lab-internet/server.key \\
    --tcp-port 8081 --udp-port 9999 --dns-port 53 --dns-answer {answer}
Restart=always

[Install]
WantedBy=multi-user.target
"""


def install_internet_fixture(cfg: LabConfig, m: Machine, tls) -> None:
    """The stand-in for the outside world serves on its own, from boot."""
    root = cfg.rootfs(m)
    dest = root / "opt/lab-internet"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "internet_server.py").write_bytes(FIXTURE_SERVER.read_bytes())
    for module in FIXTURE_MODULES:
        (dest / module.name).write_bytes(module.read_bytes())
    (dest / "server.crt").write_bytes(tls.server_cert.read_bytes())
    (dest / "server.key").write_bytes(tls.server_key.read_bytes())
    (dest / "server.key").chmod(0o600)
    unit = root / "etc/systemd/system/lab-internet.service"
    # Its own addresses only: the spare one is for the tests' listeners.
    unit.write_text(FIXTURE_UNIT.format(answer=m.uplink_addr, answer6=m.uplink_addr6))
    wants = root / "etc/systemd/system/multi-user.target.wants/lab-internet.service"
    wants.parent.mkdir(parents=True, exist_ok=True)
    if not wants.is_symlink():
        wants.symlink_to("/etc/systemd/system/lab-internet.service")


def create_rootfs(cfg: LabConfig, m: Machine, image: Path, pubkey: str,
                  nameservers: list[str]) -> None:
    root = cfg.rootfs(m)
    if (root / "etc" / "os-release").exists():
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    partial = root.with_name("rootfs.partial")
    run("rm", "-rf", str(partial))
    run("cp", "-a", "--reflink=auto", str(image), str(partial))
    _customise(cfg, m, partial, pubkey, nameservers)
    partial.rename(root)


def _customise(cfg: LabConfig, m: Machine, root: Path, pubkey: str,
               nameservers: list[str]) -> None:
    (root / "etc/hostname").write_text(f"{m.name}\n")
    hosts = ["127.0.0.1 localhost", f"127.0.1.1 {m.name}", "::1 localhost ip6-localhost"]
    (root / "etc/hosts").write_text("\n".join(hosts) + "\n")
    (root / "etc/machine-id").write_text(os.urandom(16).hex() + "\n")
    (root / "etc/resolv.conf").write_text("".join(f"nameserver {ns}\n" for ns in nameservers))

    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(pubkey)
    (ssh_dir / "authorized_keys").chmod(0o600)
    run("ssh-keygen", "-A", "-f", str(root))  # this host's own host keys

    # Trust what the control machine trusts (e.g. an intercepting egress proxy), so HTTPS
    # to the package registries works from the hosts as it does from here.
    if cfg.extra_ca_certs:
        dest = root / "usr/local/share/ca-certificates/lab-control-machine"
        dest.mkdir(parents=True, exist_ok=True)
        for cert in cfg.extra_ca_certs:
            (dest / cert.name).write_bytes(cert.read_bytes())
        run("chroot", str(root), "update-ca-certificates", "--fresh")


def pid_of(cfg: LabConfig, m: Machine) -> int | None:
    try:
        pid = int(cfg.pidfile(m).read_text())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"systemd-nspawn" in cmdline and str(cfg.rootfs(m)).encode() in cmdline else None


CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_dirs(m: Machine | None = None) -> list[Path]:
    """Where this machine's cgroups live, in each hierarchy systemd inside will use.

    With no systemd outside to give each container a scope, nspawn would put every
    container's payload in the same cgroup, and their systemds would trip over each
    other's units (status=219/CGROUP). So each machine gets its own."""
    tail = f"{PREFIX}/{m.name}" if m else PREFIX
    if (CGROUP_ROOT / "cgroup.controllers").exists():  # the unified hierarchy alone
        return [CGROUP_ROOT / tail]
    return [CGROUP_ROOT / h / tail for h in ("systemd", "unified")
            if (CGROUP_ROOT / h / "cgroup.procs").exists()]


def _enter_cgroups(dirs: list[Path]) -> None:
    for d in dirs:
        (d / "cgroup.procs").write_text("0\n")  # "0": the writing process itself


def cgroup_pids() -> set[int]:
    pids: set[int] = set()
    for top in _cgroup_dirs():
        # Containers shutting down remove cgroups under our feet: os.walk shrugs that off.
        for dirpath, _, _ in os.walk(top):
            try:
                pids.update(int(p) for p in Path(dirpath, "cgroup.procs").read_text().split())
            except OSError:
                pass
    return pids


def remove_cgroups(timeout: float = 10) -> None:
    """Remove the machines' cgroups, deepest first; a cgroup being vacated by exiting
    processes is busy for a moment, so retry until the deadline."""
    deadline = time.monotonic() + timeout
    for top in _cgroup_dirs():
        for dirpath, _, _ in list(os.walk(top, topdown=False)):
            while True:
                try:
                    os.rmdir(dirpath)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise LabError(
                            f"cgroup {dirpath} is still in use: {cgroup_pids()}") from None
                    time.sleep(0.2)


def boot(cfg: LabConfig, m: Machine, cold: bool = False) -> None:
    """Start a host unless it runs. `cold`: it ran before (it was powered off), so its
    network namespace first loses what a power cycle loses."""
    if pid_of(cfg, m):
        return
    if cold:
        reset_for_cold_boot(m.netns, m.role)
    cgroups = _cgroup_dirs(m)
    for d in cgroups:
        d.mkdir(parents=True, exist_ok=True)
    log = open(cfg.logfile(m), "ab")
    proc = subprocess.Popen(
        [
            # Boots the host again when it reboots itself (nspawn exits 133 then).
            sys.executable, "-m", "lab.supervise", m.netns, m.role,
            "systemd-nspawn", "--boot", "--quiet",
            f"--directory={cfg.rootfs(m)}", f"--machine={m.name}",
            # No systemd on the control machine: nothing to register with or scope under.
            "--register=no", "--keep-unit",
            f"--network-namespace-path=/run/netns/{m.netns}",
            "--link-journal=no", "--resolv-conf=off", "--timezone=off",
            # The console goes to the host's log file: a console pty nobody reads fills
            # up, and then PID 1 blocks writing to it (a reboot hung that way).
            "--console=pipe",
            # A host must manage its own firewall and sysctls, as a VM does; nspawn grants
            # this only with --private-network, which a namespace path excludes.
            "--capability=CAP_NET_ADMIN",
        ],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        cwd=Path(__file__).resolve().parent.parent,  # where `lab` is importable
        preexec_fn=lambda: _enter_cgroups(cgroups),
        env={**os.environ, "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"},
    )
    cfg.pidfile(m).write_text(str(proc.pid))


def wait_for_ssh(cfg: LabConfig, m: Machine, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_of(cfg, m):
            tail = cfg.logfile(m).read_text(errors="replace")[-2000:]
            raise LabError(f"{m.name}: systemd-nspawn exited while booting:\n{tail}")
        try:
            with socket.create_connection((m.ssh_addr, 22), timeout=2) as sock:
                if sock.recv(4).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise LabError(f"{m.name}: sshd did not answer on {m.ssh_addr}:22 within {timeout:.0f}s; "
                   f"see {cfg.logfile(m)}")


def container_pids(cfg: LabConfig) -> list[int]:
    """Every process whose root is inside a lab machine: containers orphaned by a killed
    systemd-nspawn keep running, and this is how we find them."""
    machines = str(cfg.machines_dir.resolve())
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            root = os.readlink(proc / "root")
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if root.startswith(machines) or (
            b"systemd-nspawn" in cmdline and machines.encode() in cmdline
        ):
            found.append(int(proc.name))
    return sorted(set(found) | cgroup_pids())


def stop_all(cfg: LabConfig, grace: float = 15) -> None:
    """Power the containers off cleanly, then kill whatever is left."""
    for m_dir in cfg.machines_dir.glob("*/nspawn.pid") if cfg.machines_dir.exists() else []:
        try:
            os.kill(int(m_dir.read_text()), signal.SIGTERM)  # nspawn asks init to power off
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + grace
    while container_pids(cfg) and time.monotonic() < deadline:
        time.sleep(0.3)
    for pid in container_pids(cfg):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 10
    while container_pids(cfg) and time.monotonic() < deadline:
        time.sleep(0.2)
    if container_pids(cfg):
        raise LabError(f"lab processes survived SIGKILL: {container_pids(cfg)}")
    remove_cgroups()
