"""The lab's root image: a debootstrapped Debian (12 unless the lab's suite says 13),
cached under a key of its recipe.

The key hashes this file and the package list, so editing the recipe rebuilds the image
and nothing else does. Machines are copies of the image, so a host can be thrown away and
made bare again in seconds.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

from .config import MIRROR, SUITES, LabConfig
from .sh import run

# What a freshly installed Debian 12 VM has that pyinfra and our tests rely on.
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "iptables", "iproute2",
    "ca-certificates", "curl", "sudo", "procps", "netbase",
    "iputils-ping",  # the tests show ICMP from a worker failing
)

def apt_sources(suite: str) -> str:
    return (f"deb {MIRROR} {suite} main\n"
            f"deb {MIRROR} {suite}-updates main\n"
            f"deb {MIRROR.replace('/debian', '/debian-security')} {suite}-security main\n")

# Timers that would take the dpkg lock in the middle of a deploy; a lab host is ours.
MASKED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
                "fstrim.timer")


def recipe_key(suite: str) -> str:
    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())
    digest.update(f"{suite} {MIRROR} {' '.join(PACKAGES)}".encode())
    return f"{suite}-{digest.hexdigest()[:16]}"


def image_path(cfg: LabConfig) -> Path:
    return cfg.images_dir / recipe_key(cfg.suite)


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
        cfg.suite, str(partial), MIRROR, timeout=1800)
    _configure(partial, cfg.suite)
    partial.rename(image)
    log(f"image built in {time.monotonic() - started:.0f}s")
    # Older images of this suite are of recipes nobody uses any more; another suite's
    # image stays for its own lab.
    for old in cfg.images_dir.iterdir():
        other_suite = any(old.name.startswith(f"{s}-") for s in SUITES if s != cfg.suite)
        if old != image and not other_suite:
            shutil.rmtree(old, ignore_errors=True)
    return image


def _configure(root: Path, suite: str) -> None:
    (root / "etc/apt/sources.list").write_text(apt_sources(suite))
    # trixie's debootstrap writes deb822 sources too: one list, not the same one twice.
    (root / "etc/apt/sources.list.d/debian.sources").unlink(missing_ok=True)
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
