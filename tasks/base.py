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
from infra.components import Catalogue
from infra.operations import directory, folder_paths, synced_folder, system_accounts
from settings.base import CA_DIR, Base

COMPONENT = Component(
    name="base",
    settings=Base,
    system_users={"orchestrator": ("autocode",), "worker": ("autocode",)},
    data_tree={role: {
        "": ("root", "root", "755"),
        "logs": ("root", "autocode", "755"),
        "config": ("root", "autocode", "750"),
    } for role in ("orchestrator", "worker")},
)


@deploy("Base system")
def apply(catalogue: Catalogue) -> None:
    base = Base.of(host)
    role = "orchestrator" if "orchestrator" in host.groups else "worker"
    # Only the platform's own account has a home: agents keep their state there.
    system_accounts(name="System accounts", users=tuple(catalogue.system_users(role)),
                    homes={base.service_user: base.service_home})
    tree = catalogue.data_tree(role)
    folders = [(base.service_home, base.service_user, base.service_user, "750")]
    folders += [(path, *tree[rel]) for rel, path in folder_paths(base.data_root, tree)]
    # Every service reads its own configuration here; files holding credentials carry
    # their own restrictive owner and mode.
    folders += [(base.install_dir, "root", "root", "755"),
                (base.config_dir, "root", "root", "755")]
    batch = tuple(path for path, *_ in folders)
    for path, owner, group, mode in folders:
        directory(name=f"Data folder {path}", path=path, user=owner, group=group, mode=mode,
                  batch=batch)
    apt.packages(name="Base packages", packages=base.base_packages, update=True,
                 cache_time=base.apt_cache_seconds)
    extra_ca_certs(base.extra_ca_certs or [])


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
