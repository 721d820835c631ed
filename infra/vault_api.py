"""A small client for the Vault HTTP API (the same API OpenBao serves), used by the deploy on
the control machine: read state, compare, write only what differs.

Stdlib only, no proxy (a secret never travels through one), TLS verified against the
platform CA. Errors name the method, the path and Vault's own error strings, never a request
body or a token. Every call is counted, so a no-change re-apply can be measured.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

KV_UPGRADING = "Upgrading from non-versioned to versioned data"
UPGRADE_WAIT_S = 30.0


class VaultAPIError(RuntimeError):
    def __init__(self, method: str, path: str, status: int | None, detail: str):
        where = f"{method} {path}"
        super().__init__(f"Vault API {where}: " + (f"HTTP {status}: {detail}" if status
                                                    else detail))
        self.status = status
        self.path = path


class VaultAPI:
    """
    + url: e.g. https://10.237.0.2:8200
    + ca_pem: the CA certificate(s) that signed the server's certificate, as PEM text;
      None trusts the system store
    + token: sent as X-Vault-Token where a call needs one
    """

    calls = 0  # across every client of this process: the deploy's API-call count

    def __init__(self, url: str, ca_pem: str | None = None, token: str | None = None,
                 timeout_s: float = 10.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        context = ssl.create_default_context(cadata=ca_pem) if ca_pem else \
            ssl.create_default_context()
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))

    def with_token(self, token: str | None) -> VaultAPI:
        other = object.__new__(VaultAPI)
        other.__dict__.update(self.__dict__)
        other.token = token
        return other

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
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}/v1/{path.lstrip('/')}", data=data,
                                     method=method)
        req.add_header("Content-Type", "application/json")
        if authenticated and self.token:
            req.add_header("X-Vault-Token", self.token)
        VaultAPI.calls += 1
        try:
            with self._opener.open(req, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return None
            raise VaultAPIError(method, path, exc.code, _errors(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise VaultAPIError(method, path, None, f"unreachable: {reason}") from None
        if not raw:
            return None
        try:
            return json.loads(raw)
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


def _errors(exc: urllib.error.HTTPError) -> str:
    try:
        errors = json.loads(exc.read() or b"{}").get("errors") or []
    except (ValueError, AttributeError):
        errors = []
    # Vault's error strings name paths and permissions, never a request's values.
    return "; ".join(str(e)[:300] for e in errors) or exc.reason or "no detail"
