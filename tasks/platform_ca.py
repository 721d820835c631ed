"""The platform CA: the trust root of the orchestrator's internal services (Vault's
listener now; Nomad RPC and log forwarding later). Separate from the proxy's CA, which is
only for intercepting worker egress.

Made once on the orchestrator with openssl; its key (0600, root) never leaves that host.
Its certificate goes into every host's trust store, and services get certificates signed
by it (`infra.operations.signed_certificate`), renewed by a re-apply before they expire.
"""

from __future__ import annotations

from pyinfra import host, inventory
from pyinfra.api import deploy

from infra.component import Component
from infra.components import Catalogue
from infra.facts import q
from infra.operations import directory, file_from_host, made_once
from infra.render import render
from settings.platform_ca import (
    CA_CERT,
    CA_KEY,
    PKI_DIR,
    TRUSTED_CA,
    TRUSTED_DIR,
    TRUSTED_LINK,
    PlatformCa,
)

COMPONENT = Component(name="platform_ca", settings=PlatformCa, certificate_authority=True)


def _make_ca(days: int) -> str:
    config = render("platform_ca/ca.cnf.j2")
    return (f"umask 077 && printf %s {q(config)} > {PKI_DIR}/ca.cnf && "
            f"openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes "
            f"-config {PKI_DIR}/ca.cnf -keyout {q(CA_KEY)} -out {q(CA_CERT)} "
            f"-days {int(days)} 2>/dev/null && rm -f {PKI_DIR}/ca.cnf")


def _trust(source: str) -> None:
    directory(name=f"Folder {TRUSTED_DIR}", path=TRUSTED_DIR, user="root", group="root",
              mode="755")
    file_from_host(name="Platform CA in the trust store", source=source, source_path=CA_CERT,
                   path=TRUSTED_CA, mode="644", must_contain="-----BEGIN CERTIFICATE-----",
                   then=("update-ca-certificates",), then_creates={TRUSTED_LINK: TRUSTED_CA})


@deploy("Platform CA")
def orchestrator(catalogue: Catalogue) -> None:
    directory(name=f"Folder {PKI_DIR}", path=PKI_DIR, user="root", group="root", mode="755")
    batch = (CA_KEY, CA_CERT)
    command = _make_ca(PlatformCa.of(host).platform_ca_days)
    made_once(name="Platform CA private key", path=CA_KEY, command=command, user="root",
              group="root", mode="600", batch=batch)
    made_once(name="Platform CA certificate", path=CA_CERT, command=command, user="root",
              group="root", mode="644", batch=batch)
    _trust(host.name)


@deploy("Trust the platform CA")
def worker(catalogue: Catalogue) -> None:
    _trust(inventory.get_group("orchestrator")[0].name)

