"""Base system: service accounts, the data tree, base packages, trusted CA certificates.

Every host gets this first (on workers, right after the egress path); everything after it
assumes the accounts and folders exist. The accounts and data folders are the ones every
component of the host's role declares (infra/components.py collects them).
"""

from __future__ import annotations

from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt

from infra.component import Component
from infra.operations import directory, folder_paths, synced_folder, system_accounts
from infra.validation import Problems, check_abs_path, check_name, check_pem_files, is_number

CA_DIR = "/usr/local/share/ca-certificates/autocode"


def check(problems: Problems, role: str, data) -> None:
    for field, example in (("data_root", "/mnt/data/autocode"), ("install_dir", "/opt/autocode"),
                           ("config_dir", "/etc/autocode"), ("service_home",
                                                             "/var/lib/autocode")):
        check_abs_path(problems, field, data.get(field), example)
    check_name(problems, "service_user", data.get("service_user"), "autocode")
    check_pem_files(problems, "extra_ca_certs", data.get("extra_ca_certs") or [])
    seconds = data.get("apt_cache_seconds")
    if not is_number(seconds) or seconds < 0:
        problems.add("apt_cache_seconds", f"{seconds!r} is not a number of seconds; e.g. 3600")


COMPONENT = Component(
    name="base",
    settings={
        # Layout on the hosts (the seed's directory structure).
        "data_root": "/mnt/data/autocode",
        "install_dir": "/opt/autocode",
        "config_dir": "/etc/autocode",
        # The platform's own service account: runs the worker agent and the model server.
        "service_user": "autocode",
        "service_home": "/var/lib/autocode",
        # Control-machine paths of CA certificates every host must trust, e.g. an
        # intercepting egress proxy's; installed under /usr/local/share/ca-certificates.
        "extra_ca_certs": [],
        "base_packages": ["ca-certificates", "curl", "gnupg", "python3-venv", "iptables",
                          "acl"],
        "apt_cache_seconds": 3600,
    },
    check=check,
    system_users={"orchestrator": ("autocode",), "worker": ("autocode",)},
    data_tree={role: {
        "": ("root", "root", "755"),
        "logs": ("root", "autocode", "755"),
        "config": ("root", "autocode", "750"),
    } for role in ("orchestrator", "worker")},
)


@deploy("Base system")
def apply() -> None:
    data = host.data
    # Only the platform's own account has a home: agents keep their state there.
    system_accounts(name="System accounts", users=tuple(data.system_users),
                    homes={data.service_user: data.service_home})
    folders = [(data.service_home, data.service_user, data.service_user, "750")]
    folders += [(path, *data.data_tree[rel]) for rel, path in
                folder_paths(data.data_root, data.data_tree)]
    # Every service reads its own configuration here; files holding credentials carry
    # their own restrictive owner and mode.
    folders += [(data.install_dir, "root", "root", "755"), (data.config_dir, "root", "root",
                                                             "755")]
    batch = tuple(path for path, *_ in folders)
    for path, owner, group, mode in folders:
        directory(name=f"Data folder {path}", path=path, user=owner, group=group, mode=mode,
                  batch=batch)
    apt.packages(name="Base packages", packages=data.base_packages, update=True,
                 cache_time=data.apt_cache_seconds)
    extra_ca_certs(data.extra_ca_certs)


orchestrator = worker = apply


def extra_ca_certs(certs: list[str]) -> None:
    """The named certificates (control-machine paths) in the trust store, and none that a
    previous inventory named and this one no longer does."""
    # Our own file names, so no other package's certificate of the same name can be
    # mistaken for ours in /etc/ssl/certs.
    wanted = {f"autocode-{Path(c).name}": Path(c).expanduser() for c in certs}
    # update-ca-certificates links each into /etc/ssl/certs: a missing link means an
    # earlier run stopped before it.
    links = {f"/etc/ssl/certs/{name[:-4]}.pem": f"{CA_DIR}/{name}" for name in wanted}
    synced_folder(name="Extra CA certificates", path=CA_DIR, files=wanted,
                  then=("update-ca-certificates",), then_creates=links)
