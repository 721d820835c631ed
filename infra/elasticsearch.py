"""Elasticsearch index management as pyinfra operations over the REST API: lifecycle (ILM)
policies, index templates, data streams, a snapshot repository and a snapshot lifecycle
(SLM) policy. Each is read, compared with what is wanted, and written only where it
differs: a PUT of an ILM or SLM policy bumps its version even when nothing changed, so a
converged cluster must see GETs only.

The calls come from the control machine: to `elasticsearch_url` for an external cluster,
or, for the orchestrator's own node (which its firewall keeps to loopback), through the
deploy's SSH connection to the orchestrator (a direct-tcpip channel to 127.0.0.1:9200),
so the node is never opened to the control machine for the deploy's sake.

The client is the deploy's shared HTTP session (infra/http_api.py), the one Vault's and
Nomad's clients use, with its channel adapter for the tunnel. Not elasticsearch-py (which
the runtime's shipper uses, for bulk writes): these are a few raw GETs and PUTs whose
answer is compared whatever its status, so only its `perform_request` would serve, and
its transport would have to be undone piece by piece for the deploy: it retries and marks
a node dead (the apply waits for a restarted node itself), its requests node honours
HTTP(S)_PROXY from the environment and an `ssl_context` given to its urllib3 node gets
certifi's roots added (the CA given would not be the only one trusted), and the SSH
channel would need a node class reaching into its pool or session, which are not its API.

"What Elasticsearch answers" is compared as a superset of what is wanted: Elasticsearch
adds defaults (an ILM phase's `min_age`, a delete action's `delete_searchable_snapshot`)
and writes settings back as strings, so wanted settings are given nested, as strings.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from pyinfra import host
from pyinfra import logger as log
from pyinfra.api import FunctionCommand, OperationError, operation

from .http_api import APIError, cause, session


class ElasticsearchError(APIError, OperationError):
    """Elasticsearch refused a call, or could not be reached; the message names the call
    and Elasticsearch's error type and reason, never a credential. An OperationError, so
    pyinfra reports it as the operation's failure."""

    service = "Elasticsearch"

    def describe(self) -> str:
        if self.status is None:
            return self.detail  # a sentence of its own: not reached, did not answer
        sep = "" if self.detail.startswith(";") else " "  # "HTTP 401; give the key in ..."
        return (f"Elasticsearch refused {self.method} {self.path}: HTTP {self.status}"
                + (sep + self.detail if self.detail else ""))


@dataclass
class ElasticsearchAPI:
    """A small REST client: JSON in, (status, JSON) out.

    + url: base URL, http(s)://host:port
    + api_key: an encoded API key (Authorization: ApiKey), or None
    + ca_pem: CA certificate(s) to verify an https server by, or None for the system's
    + tunnel: a callable giving a paramiko transport to reach url's host:port through
    """

    url: str
    api_key: str | None = field(default=None, repr=False)
    ca_pem: str | None = field(default=None, repr=False)
    tunnel: Any = field(default=None, repr=False)
    timeout: float = 15.0
    calls: list[tuple[str, str]] = field(default_factory=list, repr=False)
    _session: requests.Session | None = field(default=None, init=False, repr=False,
                                              compare=False)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"ApiKey {self.api_key}"
        self.calls.append((method, path))
        if self._session is None:
            self._session = session(self.ca_pem, self.tunnel)
        try:
            response = self._session.request(method, self.url.rstrip("/") + path, data=data,
                                             headers=headers, timeout=self.timeout,
                                             allow_redirects=False)
            raw = response.content
        except requests.RequestException as exc:
            inner = cause(exc)
            raise ElasticsearchError(method, path, None,
                                     f"Elasticsearch at {self.url} cannot be reached "
                                     f"({type(inner).__name__}: {inner})") from None
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {"raw": raw[:200].decode("utf-8", "replace")}
        return response.status_code, payload

    def get(self, path: str) -> Any | None:
        """The object at `path`, or None when Elasticsearch answers 404."""
        status, payload = self.request("GET", path)
        if status == 404:
            return None
        if status >= 300:
            raise _refusal("GET", path, status, payload)
        return payload

    def put(self, path: str, body: Any = None) -> None:
        status, payload = self.request("PUT", path, body)
        if status >= 300:
            raise _refusal("PUT", path, status, payload)

    def info(self) -> dict | None:
        """GET /: the cluster's name and version, or None while it does not answer.
        Raises ElasticsearchError when it answers but refuses the credentials: waiting
        would not help."""
        try:
            status, payload = self.request("GET", "/")
        except ElasticsearchError:
            return None
        if status in (401, 403):
            refused = _refusal("GET", "/", status, payload)
            raise ElasticsearchError(
                "GET", "/", status, refused.detail + "; give the cluster's API key in "
                "elasticsearch_credentials_file or elasticsearch_credentials_vault_path")
        return payload if status == 200 else None


def _refusal(method: str, path: str, status: int, payload: Any) -> ElasticsearchError:
    error = payload.get("error") if isinstance(payload, dict) else None
    detail = (f"{error.get('type')}: {str(error.get('reason'))[:300]}"
              if isinstance(error, dict) else "")
    return ElasticsearchError(method, path, status, detail)


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
            raise ElasticsearchError("GET", "/", None,
                                     f"Elasticsearch at {api.url} did not answer within "
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
