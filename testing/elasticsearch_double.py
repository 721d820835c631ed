"""Elasticsearch test double: a real HTTP server on 127.0.0.1 speaking the documented
``_bulk`` API, plus a fault-injecting front for a real cluster (the twins' backend).

Faithful where the shipper depends on it:
- NDJSON bulk body (gzip accepted), response ``{"took","errors","items":[{"create":{...}}]}``;
- ``create`` on an existing ``_id`` -> item 409 ``version_conflict_engine_exception``;
- data stream rules: only ``create``, ``@timestamp`` required and must be a date (else 400);
- dynamic mapping: a value that conflicts with the field's first-seen type -> item 400
  ``document_parsing_exception``;
- ``X-Elastic-Product: Elasticsearch`` on every response, ``GET /`` info.

Faults (queued with ``inject``, one consumed per bulk request): ``"429"``, ``"500"``,
``"503"`` (whole request), ``"reset"`` (connection closed, nothing stored), ``"lost_ack"``
(stored, then connection closed before answering), ``"item_429"`` (first half of the items
answered 429), ``"stall"`` (the request is held until ``release()``, then processed as
usual: a client that gave up meanwhile finds its documents stored when it sends them
again). ``down()``/``up()`` stop and restart listening on the same port.

Index management, as documented for Elasticsearch 8 (what the deploy's operations use,
infra/elasticsearch.py): ``_ilm/policy/<name>`` (a PUT bumps ``version`` even when the
policy is the same, as Elasticsearch does), ``_index_template/<name>``, ``_data_stream/<name>``
(a PUT needs a matching template with ``data_stream``; a bulk ``create`` into a name such a
template matches makes the stream), ``_snapshot/<repo>`` and ``_slm/policy/<id>``; GET of a
missing one answers 404 with the vendor's error type. Every request is counted
(``requests``), and ``GET /_double/requests`` and ``GET /_double/docs/<stream>`` answer what
the double saw and holds (the lab reads them; they are the double's own, never
Elasticsearch's).

API keys (``api_keys``, or ``PUT /_double/api_keys {"keys": [...]}``): once any is set,
every request but the double's own needs ``Authorization: ApiKey <encoded>`` with one of
them, else 401 ``security_exception`` with ``WWW-Authenticate: ApiKey``, as a cluster with
security on answers. None set (the default): no authentication, as with security off.
"""

from __future__ import annotations

import gzip
import http.client
import json
import re
import socket
import ssl
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PRODUCT_HEADER = ("X-Elastic-Product", "Elasticsearch")


def _es_error(status: int, type_: str, reason: str) -> dict:
    return {"error": {"type": type_, "reason": reason,
                      "root_cause": [{"type": type_, "reason": reason}]}, "status": status}


class FaultServerBase:
    """Listening, fault queue and counters shared by the double and the front."""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.faults: list[str] = []
        self.bulk_requests = 0
        self.conflicts = 0
        self.faults_served = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.stalled = threading.Event()  # a "stall" fault is holding a request
        self._released = threading.Event()
        self.api_keys: set[str] = set()  # encoded keys accepted; empty: no authentication
        self.unauthenticated = 0  # requests answered 401

    def authenticated(self, handler: _Handler, path: str) -> bool:
        """An ApiKey header with one of `api_keys`, when any is set; else a 401 sent."""
        with self._lock:
            keys = set(self.api_keys)
        if not keys or path.startswith("/_double/"):
            return True
        scheme, _, credential = (handler.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "apikey" and credential.strip() in keys:
            return True
        with self._lock:
            self.unauthenticated += 1
        reason = ("unable to authenticate with provided credentials and anonymous access is "
                  "not allowed for this request" if scheme else
                  f"missing authentication credentials for REST request [{path}]")
        handler.send_json(401, _es_error(401, "security_exception", reason),
                          {"WWW-Authenticate": "ApiKey"})
        return False

    @property
    def url(self) -> str:
        return f"http://{'127.0.0.1' if self.host == '0.0.0.0' else self.host}:{self.port}"

    def inject(self, *faults: str) -> None:
        with self._lock:
            self.faults.extend(faults)

    def release(self) -> None:
        """Let stalled requests go on (and every later "stall" pass at once)."""
        self._released.set()

    def next_fault(self) -> str | None:
        with self._lock:
            self.bulk_requests += 1
            if self.faults:
                self.faults_served += 1
                return self.faults.pop(0)
            return None

    def up(self) -> None:
        owner = self

        class Handler(_Handler):
            server_owner = owner

        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    start = up
    stop = down

    def handle(self, handler: _Handler, method: str, path: str, body: bytes) -> None:
        raise NotImplementedError

    def handle_bulk(self, handler: _Handler, path: str, body: bytes) -> None:
        fault = self.next_fault()
        if fault in ("429", "500", "503"):
            status = int(fault)
            kind = "es_rejected_execution_exception" if status == 429 else "unavailable"
            handler.send_json(status, _es_error(status, kind, f"injected {fault}"))
            return
        if fault == "reset":
            handler.abort()
            return
        if fault == "stall":
            self.stalled.set()
            self._released.wait(timeout=120)
        status, response = self.process_bulk(handler, path, body)
        if fault == "item_429" and status == 200:
            for item in response["items"][: max(1, len(response["items"]) // 2)]:
                result = next(iter(item.values()))
                result.clear()
                result.update(status=429, error={"type": "es_rejected_execution_exception",
                                                 "reason": "injected item 429"})
            response["errors"] = True
        if status == 200:
            with self._lock:
                self.conflicts += sum(1 for i in response["items"]
                                      if next(iter(i.values())).get("status") == 409)
        if fault == "lost_ack":
            handler.abort()
            return
        handler.send_json(status, response)

    def process_bulk(self, handler: _Handler, path: str, body: bytes) -> tuple[int, dict]:
        raise NotImplementedError


class _Handler(BaseHTTPRequestHandler):
    server_owner: FaultServerBase
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        path = self.path.split("?", 1)[0]
        log = getattr(self.server_owner, "requests", None)
        if log is not None:
            with self.server_owner._lock:
                log.append((self.command, path))
        if not self.server_owner.authenticated(self, path):
            return
        if self.command in ("POST", "PUT") and re.fullmatch(r"(/[^/_][^/]*)?/_bulk", path):
            self.server_owner.handle_bulk(self, path, body)
        else:
            self.server_owner.handle(self, self.command, path, body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch

    def send_json(self, status: int, payload: Any, extra: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header(*PRODUCT_HEADER)
        self.send_header("Content-Type", "application/vnd.elasticsearch+json;compatible-with=8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def abort(self) -> None:
        # Close without any response: what a crashed or unreachable node looks like.
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _parse_ndjson(body: bytes) -> list[Any]:
    return [json.loads(line) for line in body.split(b"\n") if line.strip()]


def _is_date(value: Any) -> bool:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return True  # epoch millis
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _value_type(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "long"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        types = {_value_type(v) for v in value} - {None}
        return types.pop() if len(types) == 1 else None
    return "keyword"


class ESDouble(FaultServerBase):
    """In-memory Elasticsearch: data streams are plain dicts of _id -> source."""

    def __init__(self) -> None:
        super().__init__()
        self.indices: dict[str, dict[str, dict]] = {}
        self.mappings: dict[str, dict[str, str]] = {}
        self._seq = 0
        self.requests: list[tuple[str, str]] = []
        self.ilm_policies: dict[str, dict] = {}  # name -> {"version", "modified_date", "policy"}
        self.index_templates: dict[str, dict] = {}
        self.data_streams: dict[str, dict] = {}
        self.repositories: dict[str, dict] = {}
        self.slm_policies: dict[str, dict] = {}

    def ids(self, index: str) -> list[str]:
        with self._lock:
            return list(self.indices.get(index, {}))

    def docs(self, index: str) -> list[dict]:
        with self._lock:
            return list(self.indices.get(index, {}).values())

    def writes(self) -> list[tuple[str, str]]:
        """Requests that change index management (PUT, POST but bulk, DELETE)."""
        with self._lock:
            return [(m, p) for m, p in self.requests
                    if m in ("PUT", "POST", "DELETE") and not p.endswith("/_bulk")]

    def _template_for(self, name: str) -> tuple[str, dict] | None:
        """The highest-priority index template whose pattern matches `name`."""
        best = None
        for tname, template in self.index_templates.items():
            for pattern in template.get("index_patterns") or []:
                if re.fullmatch(re.escape(pattern).replace(r"\*", ".*"), name):
                    if best is None or template.get("priority", 0) > best[1].get("priority", 0):
                        best = (tname, template)
        return best

    def _make_stream(self, name: str) -> dict | None:
        """The data stream `name`, made from its template; None when no template has
        data_stream for it (the caller answers the vendor's error)."""
        if name in self.data_streams:
            return self.data_streams[name]
        found = self._template_for(name)
        if found is None or "data_stream" not in found[1]:
            return None
        tname, template = found
        settings = (template.get("template") or {}).get("settings") or {}
        policy = ((settings.get("index") or {}).get("lifecycle") or {}).get("name") or \
            settings.get("index.lifecycle.name")
        stream = {"name": name, "timestamp_field": {"name": "@timestamp"},
                  "indices": [{"index_name": f".ds-{name}-000001"}], "generation": 1,
                  "status": "GREEN", "template": tname, "hidden": False}
        if policy:
            stream["ilm_policy"] = policy
        self.data_streams[name] = stream
        self.indices.setdefault(name, {})
        return stream

    def handle(self, handler: _Handler, method: str, path: str, body: bytes) -> None:
        try:
            doc = json.loads(body) if body.strip() else None
        except ValueError:
            handler.send_json(400, _es_error(400, "parse_exception", "request body is not JSON"))
            return
        parts = [p for p in path.split("/") if p]
        with self._lock:
            status, payload = self._route(method, parts, doc)
        handler.send_json(status, payload)

    def _route(self, method: str, parts: list[str], doc: Any) -> tuple[int, Any]:
        missing = (404, _es_error(404, "resource_not_found_exception",
                                  f"no handler for [{method} /{'/'.join(parts)}]"))
        if not parts and method in ("GET", "HEAD"):
            return 200, {"name": "es-double", "cluster_name": "double",
                         "version": {"number": "8.19.0", "build_flavor": "default"},
                         "tagline": "You Know, for Search"}
        if parts[:1] == ["_double"]:
            if parts[1:] == ["requests"]:
                return 200, {"requests": [list(r) for r in self.requests]}
            if len(parts) == 3 and parts[1] == "docs":
                return 200, {"docs": list(self.indices.get(parts[2], {}).values())}
            if parts[1:] == ["api_keys"] and method == "PUT" and isinstance(doc, dict):
                self.api_keys = {str(k) for k in doc.get("keys") or []}
                return 200, {"acknowledged": True}
            if parts[1:] == ["api_keys"] and method == "GET":
                return 200, {"unauthenticated": self.unauthenticated}
            return missing
        if len(parts) == 3 and parts[:2] == ["_ilm", "policy"]:
            return self._versioned(self.ilm_policies, method, parts[2], doc, "policy",
                                   "ILM policy")
        if len(parts) == 3 and parts[:2] == ["_slm", "policy"]:
            return self._versioned(self.slm_policies, method, parts[2], doc, None,
                                   "snapshot lifecycle policy")
        if len(parts) == 2 and parts[0] == "_index_template":
            name = parts[1]
            if method == "GET":
                if name not in self.index_templates:
                    return 404, _es_error(404, "resource_not_found_exception",
                                          f"index template matching [{name}] not found")
                return 200, {"index_templates": [{"name": name,
                                                  "index_template": self.index_templates[name]}]}
            if method == "PUT":
                if not isinstance(doc, dict) or not doc.get("index_patterns"):
                    return 400, _es_error(400, "action_request_validation_exception",
                                          "Validation Failed: 1: index patterns are missing;")
                self.index_templates[name] = doc
                return 200, {"acknowledged": True}
            if method == "DELETE":
                self.index_templates.pop(name, None)
                return 200, {"acknowledged": True}
            return missing
        if len(parts) == 2 and parts[0] == "_data_stream":
            name = parts[1]
            if method == "GET":
                if name not in self.data_streams:
                    return 404, _es_error(404, "index_not_found_exception",
                                          f"no such index [{name}]")
                return 200, {"data_streams": [self.data_streams[name]]}
            if method == "PUT":
                if name in self.data_streams:
                    return 400, _es_error(400, "resource_already_exists_exception",
                                          f"data_stream [{name}] already exists")
                if self._make_stream(name) is None:
                    return 400, _es_error(400, "illegal_argument_exception",
                                          f"no matching index template found for data "
                                          f"stream [{name}]")
                return 200, {"acknowledged": True}
            if method == "DELETE":
                self.data_streams.pop(name, None)
                self.indices.pop(name, None)
                return 200, {"acknowledged": True}
            return missing
        if len(parts) == 2 and parts[0] == "_snapshot":
            name = parts[1]
            if method == "GET":
                if name not in self.repositories:
                    return 404, _es_error(404, "repository_missing_exception",
                                          f"[{name}] missing")
                return 200, {name: self.repositories[name]}
            if method in ("PUT", "POST"):
                if not isinstance(doc, dict) or "type" not in doc:
                    return 400, _es_error(400, "action_request_validation_exception",
                                          "Validation Failed: 1: type is missing;")
                if doc["type"] == "fs" and not (doc.get("settings") or {}).get("location"):
                    return 500, _es_error(500, "repository_exception",
                                          f"[{name}] missing location")
                self.repositories[name] = {"type": doc["type"],
                                           "settings": doc.get("settings") or {}}
                return 200, {"acknowledged": True}
            return missing
        return missing

    def _versioned(self, store: dict, method: str, name: str, doc: Any, key: str | None,
                   what: str) -> tuple[int, Any]:
        """ILM and SLM policies: stored with a version that every PUT bumps."""
        if method == "GET":
            if name not in store:
                return 404, _es_error(404, "resource_not_found_exception",
                                      f"{what} not found: [{name}]")
            return 200, {name: store[name]}
        if method == "PUT":
            policy = doc.get(key) if key and isinstance(doc, dict) else doc
            if not isinstance(policy, dict):
                return 400, _es_error(400, "parse_exception", f"{what} body is missing")
            if key is None and "repository" in policy and \
                    policy["repository"] not in self.repositories:
                return 400, _es_error(400, "illegal_argument_exception",
                                      f"no such repository [{policy['repository']}]")
            version = store.get(name, {}).get("version", 0) + 1
            store[name] = {"version": version,
                           "modified_date": int(time.time() * 1000),
                           "policy": {**policy, **({"name": policy.get("name", name)}
                                                   if key is None else {})}}
            return 200, {"acknowledged": True}
        if method == "DELETE":
            store.pop(name, None)
            return 200, {"acknowledged": True}
        return 404, _es_error(404, "resource_not_found_exception", "no handler")

    def process_bulk(self, handler: _Handler, path: str, body: bytes) -> tuple[int, dict]:
        started = time.monotonic()
        try:
            lines = _parse_ndjson(body)
        except ValueError as exc:
            return 400, _es_error(400, "x_content_parse_exception", f"bad NDJSON: {exc}")
        default_index = path.split("/")[1] if path.count("/") == 2 else None
        items = []
        with self._lock:
            pos = 0
            while pos < len(lines):
                action = lines[pos]
                op, meta = next(iter(action.items()))
                source = lines[pos + 1] if op != "delete" else None
                pos += 1 if op == "delete" else 2
                index = meta.get("_index") or default_index
                items.append({op: self._apply(op, index, meta.get("_id"), source)})
        took = int((time.monotonic() - started) * 1000)
        errors = any(next(iter(i.values()))["status"] >= 300 for i in items)
        return 200, {"took": took, "errors": errors, "items": items}

    def _apply(self, op: str, index: str, doc_id: str | None, source: Any) -> dict:
        base = {"_index": f".ds-{index}-000001", "_id": doc_id}

        def error(status: int, type_: str, reason: str) -> dict:
            return {**base, "status": status, "error": {"type": type_, "reason": reason}}

        if op != "create":
            return error(400, "illegal_argument_exception",
                         "only write ops with an op_type of create are allowed in data streams")
        if not isinstance(source, dict):
            return error(400, "document_parsing_exception", "source is not an object")
        if "@timestamp" not in source:
            return error(400, "document_parsing_exception",
                         "data stream timestamp field [@timestamp] is missing")
        if not _is_date(source["@timestamp"]):
            return error(400, "document_parsing_exception",
                         "failed to parse field [@timestamp] of type [date]")
        if index not in self.data_streams and self.index_templates:
            self._make_stream(index)
        store = self.indices.setdefault(index, {})
        if doc_id in store:
            return error(409, "version_conflict_engine_exception",
                         f"[{doc_id}]: version conflict, document already exists "
                         "(current version [1])")
        mapping = self.mappings.setdefault(index, {"@timestamp": "date"})
        new_fields = {}
        for field, value in _flatten(source):
            kind = _value_type(value)
            known = mapping.get(field) or new_fields.get(field)
            if kind is None or field == "@timestamp":
                continue
            if known is None:
                new_fields[field] = kind
            elif known != kind and not _coercible(known, value):
                return error(400, "document_parsing_exception",
                             f"failed to parse field [{field}] of type [{known}]")
        mapping.update(new_fields)
        doc_id = doc_id or f"auto{self._seq}"
        self._seq += 1
        store[doc_id] = source
        return {**base, "_id": doc_id, "_version": 1, "result": "created",
                "_shards": {"total": 1, "successful": 1, "failed": 0},
                "_seq_no": self._seq, "_primary_term": 1, "status": 201}


def _coercible(mapped: str, value: Any) -> bool:
    """ES coerces scalars into keyword fields, and numeric strings into long fields."""
    if mapped == "keyword":
        return not isinstance(value, dict)
    if mapped == "long" and isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return False
        return True
    return False


def _flatten(source: dict, prefix: str = ""):
    for key, value in source.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield path, value
            yield from _flatten(value, path + ".")
        else:
            yield path, value


class RealClusterFront(FaultServerBase):
    """Forwards everything to a real cluster, injecting the same faults on the way."""

    def __init__(self, upstream: str, ca_certs: str | None = None) -> None:
        super().__init__()
        match = re.match(r"^(https?)://([^/:]+)(?::(\d+))?", upstream)
        assert match, upstream
        self.scheme, self.host = match.group(1), match.group(2)
        self.upstream_port = int(match.group(3) or (443 if self.scheme == "https" else 80))
        self.ssl_context = ssl.create_default_context(cafile=ca_certs) if ca_certs else None

    def _forward(self, handler: _Handler, method: str, path: str, body: bytes):
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(self.host, self.upstream_port,
                                               context=self.ssl_context, timeout=30)
        else:
            conn = http.client.HTTPConnection(self.host, self.upstream_port, timeout=30)
        headers = {k: v for k, v in handler.headers.items()
                   if k.lower() not in ("host", "content-length", "content-encoding",
                                        "connection", "accept-encoding")}
        conn.request(method, handler.path, body=body or None, headers=headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response.status, json.loads(data) if data else {}

    def handle(self, handler: _Handler, method: str, path: str, body: bytes) -> None:
        status, payload = self._forward(handler, method, path, body)
        handler.send_json(status, payload)

    def process_bulk(self, handler: _Handler, path: str, body: bytes) -> tuple[int, dict]:
        return self._forward(handler, "POST", path, body)
