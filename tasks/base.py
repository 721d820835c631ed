"""Base system: service accounts, the data tree, base packages, trusted CA certificates.

Every host gets this first; everything after it assumes the accounts and folders exist.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import FindFiles
from pyinfra.operations import apt, files, server
from pyinfra.operations.util import any_changed

from infra.facts import links_to

CA_DIR = "/usr/local/share/ca-certificates/autocode"
NOLOGIN = "/usr/sbin/nologin"


@deploy("Base system")
def apply() -> None:
    accounts(host.data.system_users, host.data.service_user, host.data.service_home)
    packages(host.data.base_packages, host.data.apt_cache_seconds)
    data_tree(host.data.data_root, host.data.data_tree)
    install_dirs(host.data.install_dir, host.data.config_dir)
    extra_ca_certs(host.data.extra_ca_certs)


def accounts(users: list[str], service_user: str, service_home: str) -> None:
    for name in users:
        server.group(name=f"Group {name}", group=name, system=True)
        is_service = name == service_user
        server.user(
            name=f"System user {name}",
            user=name, group=name, system=True, shell=NOLOGIN,
            # Only the platform's own account has a home: agents keep their state there.
            home=service_home if is_service else "/nonexistent",
            create_home=is_service, ensure_home=is_service,
        )
    if service_home:
        files.directory(name=f"Home of {service_user}", path=service_home,
                        user=service_user, group=service_user, mode="750")


def packages(names: list[str], cache_seconds: int) -> None:
    apt.packages(name="Base packages", packages=names, update=True, cache_time=cache_seconds)


def data_tree(root: str, tree: dict[str, tuple[str, str, str]]) -> None:
    # Parents before children, so every folder is created with its own owner and mode.
    for rel in sorted(tree, key=lambda p: (p.count("/"), p) if p else (-1, "")):
        owner, group, mode = tree[rel]
        path = str(PurePosixPath(root) / rel) if rel else root
        files.directory(name=f"Data folder {path}", path=path, user=owner, group=group,
                        mode=mode)


def install_dirs(install_dir: str, config_dir: str) -> None:
    files.directory(name=f"Install folder {install_dir}", path=install_dir,
                    user="root", group="root", mode="755")
    # Every service reads its own configuration here; files holding credentials carry
    # their own restrictive owner and mode.
    files.directory(name=f"Config folder {config_dir}", path=config_dir,
                    user="root", group="root", mode="755")


def extra_ca_certs(certs: list[str]) -> None:
    """Install the named certificates (control-machine paths) into the trust store, and
    remove ones a previous inventory named that this one no longer does."""
    files.directory(name="Folder for extra CA certificates", path=CA_DIR,
                    user="root", group="root", mode="755")
    # Our own file names, so no other package's certificate of the same name can be
    # mistaken for ours in /etc/ssl/certs.
    wanted = {f"autocode-{Path(c).name}": c for c in certs}
    puts = [
        files.put(name=f"CA certificate {name}", src=src, dest=f"{CA_DIR}/{name}",
                  user="root", group="root", mode="644")
        for name, src in sorted(wanted.items())
    ]
    present = host.get_fact(FindFiles, path=CA_DIR, maxdepth=1, fname="*.crt") or []
    removes = [
        files.file(name=f"Remove CA certificate {PurePosixPath(p).name}", path=p,
                   present=False)
        for p in sorted(present) if PurePosixPath(p).name not in wanted
    ]
    # update-ca-certificates links each cert into /etc/ssl/certs; a missing link means an
    # earlier run stopped before it, so the store needs rebuilding whatever changed now.
    unlinked = [n for n in wanted
                if not links_to(host, f"/etc/ssl/certs/{n[:-4]}.pem", f"{CA_DIR}/{n}")]
    if unlinked or removes:
        server.shell(name="Rebuild the CA trust store", commands=["update-ca-certificates"])
    elif puts:
        server.shell(name="Rebuild the CA trust store", commands=["update-ca-certificates"],
                     _if=any_changed(*puts))
