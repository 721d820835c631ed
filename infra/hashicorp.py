"""HashiCorp's apt repository, for every component that installs a HashiCorp package (Vault
when `secrets_server: vault`, Nomad when `worker_runner: nomad`).

One keyring and one sources file per host, whichever component asks first: the second
caller on a host gets the first one's operations back, so two components never own one
file and a host with both plans it once.

The signing key's fingerprint is one setting for both, `hashicorp_apt_key_fingerprint`,
declared by the vault component (a setting has one owner, and Vault was its first user);
`vault_apt_key_fingerprint`, its earlier name, still wins when an inventory sets it.
"""

from __future__ import annotations

import re

from pyinfra import host
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import server

from .facts import PathStates, q
from .operations import file_content
from .render import render
from .validation import Problems

KEYRING = "/usr/share/keyrings/hashicorp-archive-keyring.gpg"
SOURCES = "/etc/apt/sources.list.d/hashicorp.sources"
# HashiCorp's current archive signing key (developer.hashicorp.com, "Official packaging").
KEY_FINGERPRINT = "798AEC654E5C15428C8E42EEAA16FCBCA621E701"
FINGERPRINT = re.compile(r"[0-9A-F]{40}")


def key_fingerprint(data) -> str:
    return data.get("vault_apt_key_fingerprint") or data.get("hashicorp_apt_key_fingerprint")


def check(problems: Problems, data) -> None:
    for field in ("hashicorp_apt_key_fingerprint", "vault_apt_key_fingerprint"):
        value = data.get(field)
        if value is None and field == "vault_apt_key_fingerprint":
            continue
        if not (isinstance(value, str) and FINGERPRINT.fullmatch(value)):
            problems.add(field, f"{value!r} is not a key fingerprint; give the 40 hex digits "
                         "(upper case, no spaces) that `gpg --show-keys` prints, e.g. "
                         f"{KEY_FINGERPRINT}")
    old, new = data.get("vault_apt_key_fingerprint"), data.get("hashicorp_apt_key_fingerprint")
    if old and new not in (old, KEY_FINGERPRINT):
        problems.add("vault_apt_key_fingerprint", "differs from hashicorp_apt_key_fingerprint, "
                     "and one keyring serves every HashiCorp package; set only "
                     "hashicorp_apt_key_fingerprint")


def apt_repository(data):
    """HashiCorp's signing key (kept only when it is the pinned one) and the sources file;
    returns the sources file's operation, whose change means `apt update`."""
    declared = host.state.__dict__.setdefault("_autocode_hashicorp", {})
    if host.name in declared:
        return declared[host.name]
    distro = host.get_fact(LinuxDistribution) or {}
    codename = (distro.get("release_meta") or {}).get("VERSION_CODENAME") or "jammy"
    fingerprint = key_fingerprint(data)
    keyring = host.get_fact(PathStates, paths=(KEYRING,)).get(KEYRING)
    if keyring is None:
        # Fetched once, and kept only when it is the key we pinned.
        server.shell(name="HashiCorp's signing key", commands=[
            f"curl -fsSL https://apt.releases.hashicorp.com/gpg | gpg --dearmor "
            f"> {q(KEYRING)}.new",
            f"gpg --show-keys --with-colons {q(KEYRING)}.new | grep -q "
            f"{q('^fpr:::::::::' + fingerprint + ':')} || {{ rm -f {q(KEYRING)}.new; "
            f"echo 'HashiCorp key fingerprint differs from hashicorp_apt_key_fingerprint' >&2; "
            "exit 1; }",
            f"chmod 644 {q(KEYRING)}.new && mv {q(KEYRING)}.new {q(KEYRING)}",
        ])
    declared[host.name] = file_content(
        name="HashiCorp's apt repository", path=SOURCES,
        text=render("hashicorp/hashicorp.sources.j2", codename=codename, keyring=KEYRING))
    return declared[host.name]
