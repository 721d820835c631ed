"""Read payment and wallet secrets from Vault (KV version 2) through hvac.

Mount point: secrets live in one KV v2 engine, mounted at "secret" by default (Vault's
own default for `vault server -dev` and the usual `vault secrets enable -path=secret kv-v2`);
set `mount_point` where the deploy mounts it elsewhere. Paths inside it:

    payments/card_primary     the primary payment card
    crypto/<CURRENCY>         one wallet per currency, e.g. crypto/TON

The token comes from the `token` argument, else $VAULT_TOKEN, else a token file
(`token_file`, else $VAULT_TOKEN_FILE, else /etc/autocode/vault-token: 0600, owned by the
worker user, written by the deploy). TLS is verified against `ca_bundle`, else
$VAULT_CACERT (the platform CA on workers), else the system store. The deploy writes
VAULT_ADDR, VAULT_CACERT and VAULT_TOKEN_FILE to /etc/autocode/vault.env on workers.
Proxy variables are ignored: secrets travel on a direct connection to Vault, never
through a proxy that could record them.

Every failure becomes a SecretAccessError whose message names the path and the reason
(sealed, forbidden, not found, unreachable, TLS) and never a secret value or the token;
the library's own exception is not chained, since it carries the raw response.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import requests
from loguru import logger

DEFAULT_MOUNT_POINT = "secret"
DEFAULT_TOKEN_FILE = Path("/etc/autocode/vault-token")
PAYMENT_CARD_PATH = "payments/card_primary"
CURRENCY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,32}\Z")  # \Z: `$` lets "TON\n" by


class SecretAccessError(RuntimeError):
    """A secret could not be read. `reason` is one of: sealed, forbidden, not-found,
    unreachable, tls, no-token, invalid-name, unexpected."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class SecretManager:
    def __init__(
        self,
        vault_addr: str | None = None,
        *,
        token: str | None = None,
        token_file: Path | str | None = None,
        ca_bundle: Path | str | None = None,
        mount_point: str = DEFAULT_MOUNT_POINT,
        timeout_s: float = 10.0,
    ):
        self.vault_addr = vault_addr or os.environ.get("VAULT_ADDR") or "https://orchestrator:8200"
        self.mount_point = mount_point.strip("/")
        ca_bundle = ca_bundle or os.environ.get("VAULT_CACERT") or None
        verify = str(ca_bundle) if ca_bundle else True
        session = requests.Session()
        session.trust_env = False  # no proxy, no REQUESTS_CA_BUNDLE override: see docstring
        session.verify = verify  # hvac prefers the session's setting over its own argument
        self._client = hvac.Client(
            url=self.vault_addr,
            token=self._resolve_token(token, token_file),
            verify=verify,
            timeout=timeout_s,
            session=session,
        )

    def _resolve_token(self, token: str | None, token_file: Path | str | None) -> str:
        if token:
            return token
        if env_token := os.environ.get("VAULT_TOKEN"):
            return env_token
        token_file = token_file or os.environ.get("VAULT_TOKEN_FILE") or None
        path = Path(token_file) if token_file else DEFAULT_TOKEN_FILE
        try:
            file_token = path.read_text().strip()
        except OSError as exc:
            raise SecretAccessError(
                "no-token",
                f"no Vault token: VAULT_TOKEN is not set and token file {path} cannot be read "
                f"({exc.strerror}); set VAULT_TOKEN or pass token_file",
            ) from None
        if not file_token:
            raise SecretAccessError("no-token", f"no Vault token: token file {path} is empty")
        return file_token

    # -- public --------------------------------------------------------------------

    def get_payment_card(self) -> dict[str, Any]:
        return self._read(PAYMENT_CARD_PATH)

    def get_crypto_wallet(self, currency: str = "TON") -> dict[str, Any]:
        if not isinstance(currency, str) or not CURRENCY_PATTERN.match(currency):
            # Repr of a bad name is safe to show: it is a currency code, not a secret.
            raise SecretAccessError(
                "invalid-name",
                f"invalid currency name {str(currency)[:40]!r}: use 1-32 letters, digits, "
                "dashes or underscores",
            )
        return self._read(f"crypto/{currency}")

    def check_token(self) -> dict[str, Any]:
        """Look the token up (auth/token/lookup-self) and return its policies and TTL only:
        the response also holds the token itself, which is never passed on."""
        data = self._call("auth/token/lookup-self", self._client.auth.token.lookup_self)
        info = data.get("data") or {}
        return {"policies": info.get("policies", []), "ttl": info.get("ttl"),
                "renewable": info.get("renewable")}

    # -- internals -----------------------------------------------------------------

    def _read(self, path: str) -> dict[str, Any]:
        full = f"{self.mount_point}/{path}"
        response = self._call(
            full,
            lambda: self._client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=self.mount_point,
                # Explicit: a deleted latest version is "not found", never a silent None.
                raise_on_deleted_version=True,
            ),
        )
        try:
            secret = response["data"]["data"]
        except (KeyError, TypeError):
            raise SecretAccessError("unexpected",
                                    f"Vault answered {full} without data.data") from None
        if not isinstance(secret, dict):
            raise SecretAccessError("unexpected", f"Vault answered {full} with a non-object")
        version = (response["data"].get("metadata") or {}).get("version")
        logger.info("read secret {} (version {}, {} fields)", full, version, len(secret))
        return secret

    def _call(self, what: str, fn):
        where = f"{what} at {self.vault_addr}"
        try:
            return fn()
        except hvac.exceptions.VaultDown:
            reason, text = "sealed", f"cannot read {where}: Vault is sealed or in maintenance"
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized):
            reason, text = "forbidden", (f"cannot read {where}: permission denied (token invalid, "
                                         "expired, or its policy does not allow this path)")
        except hvac.exceptions.InvalidPath:
            reason, text = "not-found", (f"cannot read {where}: no such secret (or its latest "
                                         "version is deleted, or the mount point is wrong)")
        except requests.exceptions.SSLError:
            reason, text = "tls", (f"cannot read {where}: TLS verification failed; check that "
                                   "ca_bundle holds the CA that signed Vault's certificate")
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout):
            reason, text = "unreachable", f"cannot read {where}: Vault is unreachable"
        except hvac.exceptions.VaultError as exc:
            reason, text = "unexpected", f"cannot read {where}: Vault error {type(exc).__name__}"
        except (requests.exceptions.RequestException, ValueError) as exc:
            reason, text = "unexpected", f"cannot read {where}: {type(exc).__name__}"
        logger.warning("secret access failed: {}", text)
        raise SecretAccessError(reason, text)
