"""The platform CA's settings and where its files are: the trust root of the orchestrator's
internal services (Vault's listener, Nomad RPC, log forwarding)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from infra.settings import Describe, Settings

PKI_DIR = "/etc/autocode/pki"
CA_KEY = f"{PKI_DIR}/platform-ca.key"  # on the orchestrator, 0600 root, never leaves it
CA_CERT = f"{PKI_DIR}/platform-ca.crt"
# In the trust store of every host, and the file SecretManager(ca_bundle=...) is given.
TRUSTED_DIR = "/usr/local/share/ca-certificates/autocode-platform"
TRUSTED_CA = f"{TRUSTED_DIR}/autocode-platform-ca.crt"
TRUSTED_LINK = "/etc/ssl/certs/autocode-platform-ca.pem"


class PlatformCa(Settings):
    platform_ca_days: Annotated[int, Field(ge=365), Describe(
        "a whole number of days of at least 365", "e.g. 3650")] = 3650
    """How long the CA's certificate is valid."""
