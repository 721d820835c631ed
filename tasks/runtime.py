"""The autocode runtime package, in its own virtualenv under the install folder."""

from __future__ import annotations

import hashlib

from pyinfra import host
from pyinfra.facts.server import Command
from pyinfra.operations import files, server

from infra.wheel import autocode_wheel

# pip in a fresh venv trusts only its own bundle; the hosts' store has the extra CAs.
PIP = "--cert /etc/ssl/certs/ca-certificates.crt --disable-pip-version-check --no-input"


def venv_path() -> str:
    return f"{host.data.install_dir}/venv"


def install(extras: tuple[str, ...] = (), pins: tuple[str, ...] = ()):
    """Install or update the runtime; returns the install operation, or None when the
    venv already holds exactly this wheel, extras and pins (callers restart on it)."""
    venv = venv_path()
    wheel = autocode_wheel()
    wheel_digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    dist = f"{host.data.install_dir}/dist"
    files.directory(name=f"Folder {dist}", path=dist, user="root", group="root", mode="755")
    files.put(name=f"Wheel {wheel.name}", src=str(wheel), dest=f"{dist}/{wheel.name}",
              mode="644")

    # What is installed is recorded in the venv; a deleted or half-built venv, or new
    # sources, or other extras or pins, all differ from it and lead to a reinstall.
    want = hashlib.sha256(f"{wheel_digest} {sorted(extras)} {sorted(pins)}".encode()).hexdigest()
    marker = f"{venv}/.autocode-installed"
    have = host.get_fact(Command, command=f"cat {marker} 2>/dev/null || true")
    if (have or "").strip() == want:
        return None
    spec = f"{dist}/{wheel.name}" + (f"[{','.join(sorted(extras))}]" if extras else "")
    return server.shell(
        name="Install the autocode runtime",
        commands=[
            f"test -x {venv}/bin/pip || python3 -m venv {venv}",
            f"{venv}/bin/pip install {PIP} --quiet --force-reinstall --no-deps '{spec}'",
            f"{venv}/bin/pip install {PIP} --quiet '{spec}' {' '.join(repr(p) for p in pins)}",
            f"echo {want} > {marker}",
        ],
    )
