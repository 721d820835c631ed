"""HashiCorp's apt repository, for every component that installs a HashiCorp package (Vault
when `secrets_server: vault`, Nomad when `worker_runner: nomad`).

One keyring and one sources file per host (infra/apt_repository.py, shared with Elastic's
repository), whichever component asks first: the second caller on a host gets the first
one's operations back, so two components never own one file.

The signing key's fingerprint is one setting for both, `hashicorp_apt_key_fingerprint`,
declared by the vault component (a setting has one owner, and Vault was its first user);
`vault_apt_key_fingerprint`, its earlier name, still wins when an inventory sets it.
"""

from __future__ import annotations

from .apt_repository import FINGERPRINT, Repository, check_fingerprint
from .apt_repository import apt_repository as signed_apt_repository

KEYRING = "/usr/share/keyrings/hashicorp-archive-keyring.gpg"
SOURCES = "/etc/apt/sources.list.d/hashicorp.sources"
# HashiCorp's current archive signing key (developer.hashicorp.com, "Official packaging").
KEY_FINGERPRINT = "798AEC654E5C15428C8E42EEAA16FCBCA621E701"
REPOSITORY = Repository(
    name="HashiCorp", key_url="https://apt.releases.hashicorp.com/gpg", keyring=KEYRING,
    sources=SOURCES, uris="https://apt.releases.hashicorp.com", suite=None,
    components="main",
    header="# Managed by autocode (infra/hashicorp.py): HashiCorp's packages (Vault, Nomad).",
    setting="hashicorp_apt_key_fingerprint")
__all__ = ["FINGERPRINT", "KEY_FINGERPRINT", "REPOSITORY", "apt_repository",
           "check_fingerprint"]


def apt_repository(fingerprint: str):
    """HashiCorp's signing key (kept only when it is the pinned one: `fingerprint`) and the
    sources file; returns the sources file's operation, whose change means `apt update`."""
    return signed_apt_repository(REPOSITORY, fingerprint)
