"""A small client for the Vault HTTP API (the same API OpenBao serves), used by the deploy on
the control machine: read state, compare, write only what differs.

hvac's adapter (`hvac.adapters.RawAdapter`) makes each request: the X-Vault-Token and
X-Vault-Request headers, the URL under /v1/, over the shared session (infra/http_api.py:
TLS verified against the platform CA, no proxy, nothing from the environment). Two things
of hvac are not used, on purpose:
- its exceptions: they carry no status code (412, 472, 473 and any other unlisted status
  all become UnexpectedError), and the deploy branches on it (`ok=` statuses, a 403 that
  means "revoked", sys/health's standby codes). The adapter is called with
  raise_exception=False and the answer's status and Vault's own `errors` make a
  VaultAPIError;
- its typed methods (hvac.Client.sys, .auth.token, .secrets.kv): the deploy reads Vault's
  raw answers and compares them with what it wants (mounts, policies, token roles, KV
  data), on paths the rest of the deploy names (`get("sys/mounts")`, `put(path, body)`),
  and several typed methods answer differently from the raw paths (a KV v2 read raising on
  404, token roles taking other parameter names).

Errors name the method, the path and Vault's own error strings, never a request body or a
token. Every call is counted, so a no-change re-apply can be measured.
"""

from __future__ import annotations

import json
import time
from typing import Any

import hvac.adapters
import requests

from .http_api import APIError, Client, unreachable

KV_UPGRADING = "Upgrading from non-versioned to versioned data"
UPGRADE_WAIT_S = 30.0


class VaultAPIError(APIError):
    service = "Vault API"


class VaultAPI(Client):
    """
    + url: e.g. https://10.237.0.2:8200
    + ca_pem: the CA certificate(s) that signed the server's certificate, as PEM text;
      None trusts the system store
    + token: sent as X-Vault-Token where a call needs one
    """

    calls = 0  # across every client of this process: the deploy's API-call count

    def _bind(self) -> None:
        def adapter(token: str | None) -> hvac.adapters.RawAdapter:
            # No redirects: the token goes to the server named, nowhere else.
            return hvac.adapters.RawAdapter(base_uri=self.url, token=token,
                                            timeout=self.timeout_s, session=self.session,
                                            allow_redirects=False)

        self._adapters = {True: adapter(self.token), False: adapter(None)}

    def request(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (),
                authenticated: bool = True) -> dict[str, Any] | None:
        """The decoded JSON answer (None for 204 or a status listed in `ok`). A KV v2
        mount just made answers 400 "Upgrading from non-versioned to versioned data" for
        a moment (Vault and OpenBao alike): that is waited out, up to UPGRADE_WAIT_S."""
        deadline = time.monotonic() + UPGRADE_WAIT_S
        while True:
            try:
                return self._request(method, path, body, ok, authenticated)
            except VaultAPIError as exc:
                if exc.status != 400 or KV_UPGRADING not in str(exc) or \
                        time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _request(self, method: str, path: str, body: Any, ok: tuple[int, ...],
                 authenticated: bool) -> dict[str, Any] | None:
        self.counted()
        try:
            answer = self._adapters[authenticated].request(
                method, f"/v1/{path.lstrip('/')}", raise_exception=False,
                headers={"Content-Type": "application/json"},
                data=None if body is None else json.dumps(body).encode())
        except requests.RequestException as exc:
            raise VaultAPIError(method, path, None, unreachable(exc)) from None
        if answer.status_code >= 300:  # a redirect too: a standby, or not the server named
            if answer.status_code in ok:
                return None
            raise VaultAPIError(method, path, answer.status_code, _errors(answer)) from None
        if not answer.content:
            return None
        try:
            return answer.json()
        except ValueError:
            raise VaultAPIError(method, path, None, "answer is not JSON") from None

    def get(self, path: str, **kw) -> dict[str, Any] | None:
        return self.request("GET", path, **kw)

    def put(self, path: str, body: Any = None, **kw) -> dict[str, Any] | None:
        return self.request("PUT", path, body if body is not None else {}, **kw)

    def delete(self, path: str, **kw) -> dict[str, Any] | None:
        return self.request("DELETE", path, **kw)

    def seal_status(self) -> dict[str, Any]:
        return self.get("sys/seal-status", authenticated=False) or {}


def _errors(answer: requests.Response) -> str:
    try:
        errors = json.loads(answer.content or b"{}").get("errors") or []
    except (ValueError, AttributeError):
        errors = []
    # Vault's error strings name paths and permissions, never a request's values.
    return "; ".join(str(e)[:300] for e in errors) or answer.reason or "no detail"
