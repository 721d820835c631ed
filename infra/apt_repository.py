"""A vendor's signed apt repository (deb822, `Signed-By` a keyring holding only the vendor's
key, whose fingerprint is pinned): HashiCorp's (infra/hashicorp.py) and Elastic's
(tasks/elasticsearch.py, shared with Filebeat) are both declared through this.

One keyring and one sources file per host and repository, whichever component asks first:
a second caller on the same host gets the first one's operation back, so two components
never own one file and a host with both plans it once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pyinfra import host
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import server

from autocode.problems import Problems

from .facts import PathStates, q
from .operations import file_content
from .render import render

FINGERPRINT = re.compile(r"[0-9A-F]{40}")


@dataclass(frozen=True)
class Repository:
    """
    + name: how messages name the vendor, e.g. "HashiCorp"
    + key_url: where the vendor publishes its (armored) signing key
    + keyring: the dearmored keyring file on the host
    + sources: the deb822 sources file on the host
    + uris: the repository's base URL
    + suite: its suite, or None for the host's release codename (HashiCorp's layout)
    + components: e.g. "main"
    + header: the sources file's first comment line
    + setting: the setting that pins the key's fingerprint, for messages
    """

    name: str
    key_url: str
    keyring: str
    sources: str
    uris: str
    suite: str | None
    components: str
    header: str
    setting: str


def check_fingerprint(problems: Problems, field: str, value, example: str) -> bool:
    if isinstance(value, str) and FINGERPRINT.fullmatch(value):
        return True
    problems.add(field, f"{value!r} is not a key fingerprint", "give the 40 hex digits "
                 f"(upper case, no spaces) that `gpg --show-keys` prints, e.g. {example}")
    return False


def sources_text(repo: Repository, codename: str) -> str:
    return render("apt/signed.sources.j2", header=repo.header, uris=repo.uris,
                  suite=repo.suite or codename, components=repo.components,
                  keyring=repo.keyring)


def apt_repository(repo: Repository, fingerprint: str):
    """The vendor's signing key (kept only when it is the pinned one) and the sources file;
    returns the sources file's operation, whose change means `apt update`."""
    declared = host.state.__dict__.setdefault("_autocode_apt_repositories", {})
    if (host.name, repo.sources) in declared:
        return declared[(host.name, repo.sources)]
    codename = "jammy"
    if repo.suite is None:
        distro = host.get_fact(LinuxDistribution) or {}
        codename = (distro.get("release_meta") or {}).get("VERSION_CODENAME") or codename
    keyring = host.get_fact(PathStates, paths=(repo.keyring,)).get(repo.keyring)
    if keyring is None:
        # Fetched once, and kept only when it is the key we pinned.
        new = f"{repo.keyring}.new"
        server.shell(name=f"{repo.name}'s signing key", commands=[
            f"curl -fsSL {q(repo.key_url)} | gpg --dearmor > {q(new)}",
            f"gpg --show-keys --with-colons {q(new)} | grep -q "
            f"{q('^fpr:::::::::' + fingerprint + ':')} || {{ rm -f {q(new)}; "
            f"echo {q(f'{repo.name} key fingerprint differs from {repo.setting}')} >&2; "
            "exit 1; }",
            f"chmod 644 {q(new)} && mv {q(new)} {q(repo.keyring)}",
        ])
    declared[(host.name, repo.sources)] = file_content(
        name=f"{repo.name}'s apt repository", path=repo.sources,
        text=sources_text(repo, codename))
    return declared[(host.name, repo.sources)]
