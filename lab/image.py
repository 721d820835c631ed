"""The lab's root image: a debootstrapped Debian 12, cached under a key of its recipe.

The key hashes this file and the package list, so editing the recipe rebuilds the image
and nothing else does. Machines are copies of the image, so a host can be thrown away and
made bare again in seconds.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

from .config import MIRROR, SUITE, LabConfig
from .sh import run

# What a freshly installed Debian 12 VM has that pyinfra and our tests rely on.
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "iptables", "iproute2",
    "ca-certificates", "curl", "sudo", "procps", "netbase",
    "iputils-ping",  # the tests show ICMP from a worker failing
)

APT_SOURCES = f"""\
deb {MIRROR} {SUITE} main
deb {MIRROR} {SUITE}-updates main
deb {MIRROR.replace('/debian', '/debian-security')} {SUITE}-security main
"""

# Timers that would take the dpkg lock in the middle of a deploy; a lab host is ours.
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
                "fstrim.timer")


def recipe_key() -> str:
    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())
    digest.update(f"{SUITE} {MIRROR} {' '.join(PACKAGES)}".encode())
    return digest.hexdigest()[:16]


def image_path(cfg: LabConfig) -> Path:
    return cfg.images_dir / recipe_key()


def ensure_image(cfg: LabConfig, log=print) -> Path:
    """Return the image for the current recipe, building it if it is not cached."""
    image = image_path(cfg)
    if (image / "etc" / "os-release").exists():
        return image
    cfg.images_dir.mkdir(parents=True, exist_ok=True)
    partial = image.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)  # a build killed half-way starts over
    log(f"building the lab image {image.name} with debootstrap (about a minute)...")
    started = time.monotonic()
    run("debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
        SUITE, str(partial), MIRROR, timeout=1800)
    _configure(partial)
    partial.rename(image)
    log(f"image built in {time.monotonic() - started:.0f}s")
    # Older images are of recipes nobody uses any more.
    for old in cfg.images_dir.iterdir():
        if old != image:
            shutil.rmtree(old, ignore_errors=True)
    return image


def _configure(root: Path) -> None:
    (root / "etc/apt/sources.list").write_text(APT_SOURCES)
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # every machine gets its own host keys
    (root / "etc/machine-id").write_text("")
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    for unit in MASKED_UNITS:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
