"""Elasticsearch index management as pyinfra operations over the REST API: lifecycle (ILM)
policies, index templates, data streams, a snapshot repository and a snapshot lifecycle
(SLM) policy. Each is read, compared with what is wanted, and written only where it
differs: a PUT of an ILM or SLM policy bumps its version even when nothing changed, so a
converged cluster must see GETs only.

The calls come from the control machine: to `elasticsearch_url` for an external cluster,
or, for the orchestrator's own node (which its firewall keeps to loopback), through the
deploy's SSH connection to the orchestrator (a direct-tcpip channel to 127.0.0.1:9200),
so the node is never opened to the control machine for the deploy's sake.

"What Elasticsearch answers" is compared as a superset of what is wanted: Elasticsearch
adds defaults (an ILM phase's `min_age`, a delete action's `delete_searchable_snapshot`)
and writes settings back as strings, so wanted settings are given nested, as strings.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pyinfra import logger as log
from pyinfra.api import FunctionCommand, OperationError, operation


class ElasticsearchError(OperationError):
    """Elasticsearch refused a call, or could not be reached; the message names the call
    and Elasticsearch's error type and reason, never a credential."""


class _ChannelConnection(http.client.HTTPConnection):
    """HTTP over an SSH direct-tcpip channel (paramiko) instead of a socket."""

    def __init__(self, transport, target: tuple[str, int], timeout: float) -> None:
        super().__init__(target[0], target[1], timeout=timeout)
        self._transport = transport
        self._target = target

    def connect(self) -> None:
        try:
            channel = self._transport.open_channel("direct-tcpip", self._target,
                                                   ("127.0.0.1", 0), timeout=self.timeout)
        except Exception as exc:  # paramiko's ChannelException: nothing listens there
            raise ConnectionRefusedError(f"{self._target[0]}:{self._target[1]} on the "
                                         f"orchestrator: {exc}") from None
        channel.settimeout(self.timeout)
        self.sock = channel


@dataclass
class ElasticsearchAPI:
    """A small REST client: JSON in, (status, JSON) out.

    + url: base URL, http(s)://host:port
    + api_key: an encoded API key (Authorization: ApiKey), or None
    + ca_pem: CA certificate(s) to verify an https server by, or None for the system's
    + tunnel: a callable giving a paramiko transport to reach url's host:port through
    """

    url: str
    api_key: str | None = None
    ca_pem: str | None = None
    tunnel: Any = None
    timeout: float = 15.0
    calls: list[tuple[str, str]] = field(default_factory=list)

    def _connection(self) -> http.client.HTTPConnection:
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if self.tunnel is not None:
            return _ChannelConnection(self.tunnel(), (parts.hostname, port), self.timeout)
        if parts.scheme == "https":
            context = ssl.create_default_context(cadata=self.ca_pem) if self.ca_pem else \
                ssl.create_default_context()
            return http.client.HTTPSConnection(parts.hostname, port, context=context,
                                               timeout=self.timeout)
        return http.client.HTTPConnection(parts.hostname, port, timeout=self.timeout)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"ApiKey {self.api_key}"
        self.calls.append((method, path))
        conn = self._connection()
        try:
            conn.request(method, urlsplit(self.url).path.rstrip("/") + path, body=data,
                         headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ElasticsearchError(f"Elasticsearch at {self.url} cannot be reached "
                                     f"({type(exc).__name__}: {exc})") from None
        finally:
            conn.close()
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {"raw": raw[:200].decode("utf-8", "replace")}
        return response.status, payload

    def get(self, path: str) -> Any | None:
        """The object at `path`, or None when Elasticsearch answers 404."""
        status, payload = self.request("GET", path)
        if status == 404:
            return None
        if status >= 300:
            raise ElasticsearchError(_refusal("GET", path, status, payload))
        return payload

    def put(self, path: str, body: Any = None) -> None:
        status, payload = self.request("PUT", path, body)
        if status >= 300:
            raise ElasticsearchError(_refusal("PUT", path, status, payload))

    def info(self) -> dict | None:
        """GET /: the cluster's name and version, or None while it does not answer.
        Raises ElasticsearchError when it answers but refuses the credentials: waiting
        would not help."""
        try:
            status, payload = self.request("GET", "/")
        except ElasticsearchError:
            return None
        if status in (401, 403):
            raise ElasticsearchError(
                _refusal("GET", "/", status, payload) + "; give the cluster's API key in "
                "elasticsearch_credentials_file or elasticsearch_credentials_vault_path")
        return payload if status == 200 else None


def _refusal(method: str, path: str, status: int, payload: Any) -> str:
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return (f"Elasticsearch refused {method} {path}: HTTP {status} {error.get('type')}: "
                f"{str(error.get('reason'))[:300]}")
    return f"Elasticsearch refused {method} {path}: HTTP {status}"


def api_key_from_file(text: str) -> str:
    """The encoded API key a credentials file holds: one line, base64 of `id:key` (what
    Elasticsearch's create-API-key answer calls `encoded`). Raises ValueError (naming no
    part of the key) otherwise."""
    key = text.strip()
    if not key or "\n" in key or " " in key:
        raise ValueError("holds no single-line API key")
    try:
        decoded = base64.b64decode(key, validate=True).decode()
    except ValueError:
        raise ValueError("is not a base64 (encoded) API key") from None
    if ":" not in decoded:
        raise ValueError("is not an encoded API key (base64 of id:api_key)")
    return key


# -- what is wanted, and how it compares with what Elasticsearch answers --------------------


@dataclass(frozen=True)
class Managed:
    """One object Elasticsearch holds: its API path, the body to PUT, and how to find the
    object itself in what a GET answers."""

    kind: str  # ilm_policy | index_template | data_stream | snapshot_repository | slm_policy
    name: str
    body: Mapping[str, Any] | None

    @property
    def path(self) -> str:
        return {"ilm_policy": "/_ilm/policy/", "index_template": "/_index_template/",
                "data_stream": "/_data_stream/", "snapshot_repository": "/_snapshot/",
                "slm_policy": "/_slm/policy/"}[self.kind] + self.name

    def current(self, answer: Any) -> Any | None:
        if answer is None:
            return None
        if self.kind in ("ilm_policy", "slm_policy"):
            return (answer.get(self.name) or {}).get("policy")
        if self.kind == "index_template":
            found = [t for t in answer.get("index_templates") or [] if t.get("name") == self.name]
            return found[0]["index_template"] if found else None
        if self.kind == "data_stream":
            found = [s for s in answer.get("data_streams") or [] if s.get("name") == self.name]
            return found[0] if found else None
        return answer.get(self.name)

    def wanted(self) -> Any:
        if self.kind == "ilm_policy":
            return (self.body or {}).get("policy")
        return self.body

    def differs(self, current: Any) -> bool:
        if current is None:
            return True
        if self.kind == "data_stream":
            return False  # it exists; its template decides the rest
        return not covers(current, self.wanted())


def covers(have: Any, want: Any) -> bool:
    """True when `have` holds everything in `want`: mappings key by key (extra keys in
    `have` are Elasticsearch's defaults), lists item by item, scalars compared as strings
    (Elasticsearch answers settings as strings)."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(
            k in have and covers(have[k], v) for k, v in want.items())
    if isinstance(want, list | tuple):
        return isinstance(have, list | tuple) and len(have) == len(want) and all(
            covers(h, w) for h, w in zip(have, want, strict=True))
    if isinstance(want, bool) or isinstance(have, bool):
        return str(want).lower() == str(have).lower()
    return str(want) == str(have)


def differing(api: ElasticsearchAPI, objects: list[Managed]) -> list[Managed]:
    """The objects whose state in Elasticsearch is not what is wanted: one GET each."""
    return [obj for obj in objects if obj.differs(obj.current(api.get(obj.path)))]


def apply(api: ElasticsearchAPI, objects: list[Managed]) -> list[Managed]:
    """Write what differs, in the given order (policies before the templates naming them,
    templates before their data streams, a repository before its SLM policy); returns what
    was written."""
    written = []
    for obj in differing(api, objects):
        api.put(obj.path, obj.body)
        written.append(obj)
    return written


def wait_until_answering(api: ElasticsearchAPI, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        info = api.info()
        if info is not None:
            return info
        if time.monotonic() > deadline:
            raise ElasticsearchError(f"Elasticsearch at {api.url} did not answer within "
                                     f"{seconds:.0f} s; see `journalctl -u elasticsearch` on "
                                     "the orchestrator, or elasticsearch_url")
        time.sleep(1)


# -- the operation --------------------------------------------------------------------------


@operation()
def elasticsearch_objects(api: ElasticsearchAPI, objects: tuple, wait_s: float = 120):
    """These ILM policies, index templates, data streams, snapshot repository and SLM policy
    in Elasticsearch, each as given (others are left alone): read at plan time, and only
    what differs written, re-read when the apply runs.

    + api: the cluster's client (ElasticsearchAPI)
    + objects: Managed objects, in the order they must be written
    + wait_s: how long an apply waits for a node that was just (re)started to answer
    """
    objects = list(objects)
    try:
        todo = differing(api, objects) if api.info() is not None else None
    except ElasticsearchError as exc:
        log.warning(f"Elasticsearch: {exc}; planned as if empty")
        todo = None
    if todo == []:
        from pyinfra import host
        host.noop(f"Elasticsearch: {len(objects)} policies, templates, streams and the "
                  "snapshot repository as wanted")
        return
    if todo is None:
        log.warning(f"Elasticsearch at {api.url} does not answer yet (a node installed or "
                    "restarted by this apply): everything is planned")
    yield FunctionCommand(_apply_at_run_time, (api, tuple(objects), wait_s), {})


def _apply_at_run_time(state, host, api: ElasticsearchAPI, objects, wait_s) -> None:
    wait_until_answering(api, wait_s)
    written = apply(api, list(objects))
    for obj in written:
        log.info(f"Elasticsearch: wrote {obj.kind} {obj.name}")
