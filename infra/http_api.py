"""The HTTP layer the deploy's API clients share (Vault's, Nomad's, Elasticsearch's): they
talk from the control machine to services the deploy itself runs, each over one
`requests` session made here, and fail with one error class.

- Trust: the CA certificate(s) to verify a server by are given as PEM text and held in an
  SSLContext that the session's adapter uses (nothing written to disk); None trusts the
  system's store, as Python's own default context does (not certifi's bundle).
- No proxy and nothing from the environment (`trust_env` off): a token or a secret never
  travels through a proxy, and HTTPS_PROXY, REQUESTS_CA_BUNDLE, NOMAD_ADDR, VAULT_ADDR or a
  .netrc cannot redirect or re-trust the deploy's calls.
- A tunnel: with one, plain-HTTP connections are SSH direct-tcpip channels (paramiko) of the
  deploy's connection to a host, instead of sockets (the orchestrator's own Elasticsearch
  node, which its firewall keeps to loopback).
- Errors (`APIError`) name the service, the method, the path, the status and the service's
  own error strings, never a request body or a token; a failed connection is said by its
  own cause (`cause`: the socket's or TLS's error), not by requests' wrappings of it.
- Calls are counted per client class (`Client.calls`), so a no-change re-apply can be
  measured.
"""

from __future__ import annotations

import copy
import ssl
from collections.abc import Callable
from typing import Any

import requests
import requests.adapters
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import NewConnectionError


class APIError(RuntimeError):
    """A service refused a call, could not be reached, or answered what is not JSON.

    + method, path: the call (a path below the service's API root, never a full URL)
    + status: the HTTP status, or None when there was no answer to speak of
    + detail: the service's own error strings, or why there was no answer
    """

    service = "API"

    def __init__(self, method: str, path: str, status: int | None, detail: str):
        self.method, self.path, self.status, self.detail = method, path, status, detail
        super().__init__(self.describe())

    def describe(self) -> str:
        where = f"{self.service} {self.method} {self.path}: "
        return where + (f"HTTP {self.status}: {self.detail}" if self.status else self.detail)

    def __reduce__(self):  # copied or pickled with its four parts, not its message
        return type(self), (self.method, self.path, self.status, self.detail)


def cause(exc: BaseException) -> BaseException:
    """The innermost error behind a failed request: requests wraps urllib3's error, which
    wraps the socket's or TLS's own (refused, timed out, certificate verify failed)."""
    seen = {id(exc)}
    while True:
        inner = getattr(exc, "reason", None)
        if not isinstance(inner, BaseException):
            inner = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) \
                else exc.__cause__
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def unreachable(exc: BaseException) -> str:
    return f"unreachable: {cause(exc)}"


# -- the session ----------------------------------------------------------------------------


class _TrustAdapter(requests.adapters.HTTPAdapter):
    """HTTPS verified against one SSLContext only: requests would otherwise add certifi's
    bundle (or REQUESTS_CA_BUNDLE) to it through `ca_certs`."""

    def __init__(self, context: ssl.SSLContext):
        self._context = context
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def cert_verify(self, conn, url: str, verify, cert) -> None:
        super().cert_verify(conn, url, True, cert)  # never unverified, whatever a call says
        conn.ca_certs = conn.ca_cert_dir = None  # the context holds the trust


class _ChannelConnection(HTTPConnection):
    """HTTP over an SSH direct-tcpip channel (paramiko) instead of a socket."""

    tunnel: Callable[[], Any]  # set per session: gives the paramiko transport

    def _new_conn(self):
        target = (self.host, self.port)
        timeout = self.timeout if isinstance(self.timeout, int | float) else None
        try:
            channel = type(self).tunnel().open_channel("direct-tcpip", target, ("127.0.0.1", 0),
                                                       timeout=timeout)
        except Exception as exc:  # paramiko's ChannelException: nothing listens there
            refused = ConnectionRefusedError(f"{self.host}:{self.port} on the orchestrator: "
                                             f"{exc}")
            raise NewConnectionError(self, str(refused)) from refused
        channel.settimeout(timeout)
        return channel


class _ChannelAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, tunnel: Callable[[], Any]):
        connection = type("ChannelConnection", (_ChannelConnection,),
                          {"tunnel": staticmethod(tunnel)})
        self._pool = type("ChannelPool", (HTTPConnectionPool,), {"ConnectionCls": connection})
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": self._pool}


def trust(ca_pem: str | None) -> ssl.SSLContext:
    """Verifies certificates (and host names) against `ca_pem` only, or, with None, against
    the system's store."""
    return ssl.create_default_context(cadata=ca_pem) if ca_pem else \
        ssl.create_default_context()


def session(ca_pem: str | None = None, tunnel: Callable[[], Any] | None = None
            ) -> requests.Session:
    """A session for one service: HTTPS verified against `ca_pem` (PEM text; None: the
    system's store), no proxy, nothing read from the environment; with `tunnel` (a callable
    giving a paramiko transport), plain HTTP goes through direct-tcpip channels of it."""
    made = requests.Session()
    made.trust_env = False  # no proxy, no .netrc, no REQUESTS_CA_BUNDLE or *_ADDR
    made.proxies = {}
    made.mount("https://", _TrustAdapter(trust(ca_pem)))
    if tunnel is not None:
        made.mount("http://", _ChannelAdapter(tunnel))
    return made


# -- the clients' base ----------------------------------------------------------------------


class Client:
    """A service's client: its URL, the CA to verify it by, a token, a timeout, and the
    session (one per client and the copies `with_token` makes of it).

    + url: e.g. https://10.237.0.2:8200
    + ca_pem: the CA certificate(s) that signed the server's certificate, as PEM text;
      None trusts the system store
    + token: sent where a call needs one, as the service wants it
    """

    calls = 0  # per client class, across every client of this process: the deploy's count

    def __init__(self, url: str, ca_pem: str | None = None, token: str | None = None,
                 timeout_s: float = 10.0):
        self.url = url.rstrip("/")
        self.ca_pem = ca_pem
        self.token = token
        self.timeout_s = timeout_s
        self.session = session(ca_pem)
        self._bind()

    def _bind(self) -> None:
        """Make what carries this client's token (the library's objects over the session)."""

    def with_token(self, token: str | None):
        """The same client (and session) with another token."""
        other = copy.copy(self)
        other.token = token
        other._bind()
        return other

    def counted(self) -> None:
        type(self).calls += 1

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"  # never the token

