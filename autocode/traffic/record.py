"""Build one redacted traffic record from a finished mitmproxy HTTP flow, or from a
connection that is not HTTP (raw TCP, TLS around something else, WebSocket, a TLS
handshake the client aborted).

The record is plain JSON-able data. ``record_id`` (128 bits, unique: see new_record_id;
assigned in the hook) is also the Elasticsearch ``_id``, so a retried bulk request can
never store it twice.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

from mitmproxy import http
from mitmproxy.connection import Connection
from mitmproxy.net.http import url as mitm_url

from autocode.traffic.redact import Redactor

UNKNOWN_WORKER = "unknown"
PROXY_HOST = socket.gethostname()


@functools.lru_cache(maxsize=64)
def _second_prefix(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def iso_timestamp(epoch: float) -> str:
    """UTC ISO-8601 with milliseconds, the form Elasticsearch's date type parses. Built
    from a cached per-second prefix: this runs for every flow."""
    second = int(epoch)
    millis = int((epoch - second) * 1000)
    return f"{_second_prefix(second)}.{millis:03d}Z"


# 64 random bits per process, then a 64-bit count: unique within the process by
# construction and across processes and restarts by the random half. Profiled: one
# os.urandom per flow cost 15 us here (a getrandom system call each), a third of the
# addon's whole cost per flow; a count costs nothing.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNT = itertools.count(int.from_bytes(os.urandom(4), "big"))


def _new_prefix() -> None:  # a forked child must not repeat its parent's ids
    global _ID_PREFIX
    _ID_PREFIX = os.urandom(8).hex()


os.register_at_fork(after_in_child=_new_prefix)


def new_record_id() -> str:
    """A 128-bit id, 32 hex digits: the process's random prefix and the next count."""
    return f"{_ID_PREFIX}{next(_ID_COUNT) & 0xFFFFFFFFFFFFFFFF:016x}"


@functools.lru_cache(maxsize=4096)  # a handful of worker IPs, seen on every flow
def normalise_ip(address: str) -> str:
    """'::ffff:10.0.0.5' -> '10.0.0.5' so IPv4 workers match on dual-stack listeners."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ip)


@functools.lru_cache(maxsize=4096)
def _parse_authority(authority: str) -> tuple[str, int | None]:
    return mitm_url.parse_authority(authority, check=False)


def pretty_host_and_url(request: http.Request) -> tuple[str, str]:
    """``request.pretty_host`` and ``request.pretty_url`` (what --showhost shows), computed
    with one cached Host parse: mitmproxy's own properties parse it twice per flow."""
    if request.first_line_format == "authority":
        return request.pretty_host, request.pretty_url
    host_header = request.host_header
    if not host_header:
        return request.host, request.url
    host, port = _parse_authority(host_header)
    port = port or mitm_url.default_port(request.scheme) or 443
    return host, mitm_url.unparse(request.scheme, host, port, request.path)


def _body_size(message: http.Message) -> int | None:
    if message.raw_content is not None:
        return len(message.raw_content)
    # Streamed bodies are not kept; fall back to the declared length if any.
    declared = message.headers.get("content-length", "")
    return int(declared) if declared.isdigit() else None


def build_record(flow: http.HTTPFlow, workers: dict[str, str], redactor: Redactor,
                 verdict: str = "allowed", reason: str | None = None) -> dict:
    request = flow.request
    response = flow.response
    client_ip = normalise_ip(flow.client_conn.peername[0]) if flow.client_conn.peername else ""
    server_ip = None
    if flow.server_conn and flow.server_conn.peername:
        server_ip = normalise_ip(flow.server_conn.peername[0])

    if response is not None and response.timestamp_end:
        ended = response.timestamp_end
    elif flow.error is not None:
        ended = flow.error.timestamp
    else:
        ended = None
    host, url = pretty_host_and_url(request)
    duration_ms = round((ended - request.timestamp_start) * 1000, 3) if ended else None

    record: dict[str, Any] = {
        "@timestamp": iso_timestamp(request.timestamp_start),
        "record_id": new_record_id(),
        "kind": "http",
        "verdict": verdict,
        "reason": reason,
        "worker_id": workers.get(client_ip, UNKNOWN_WORKER),
        "client_ip": client_ip,
        "server_ip": server_ip,
        "proxy_host": PROXY_HOST,
        "method": request.method,
        "scheme": request.scheme,
        "host": host,
        "port": request.port,
        "url": redactor.url(url),
        "http_version": request.http_version,
        "status": response.status_code if response is not None else None,
        "request_headers": redactor.headers_dict(request.headers.fields),
        "response_headers": (
            redactor.headers_dict(response.headers.fields) if response is not None else {}
        ),
        "request_bytes": _body_size(request),
        "response_bytes": _body_size(response) if response is not None else None,
        "duration_ms": duration_ms,
        "error": flow.error.msg if flow.error is not None else None,
    }
    return record


def _address(conn: Connection | None, attribute: str) -> tuple[str | None, int | None]:
    value = getattr(conn, attribute, None) if conn is not None else None
    if not value:
        return None, None
    return normalise_ip(str(value[0])), int(value[1])


def connection_record(kind: str, client: Connection, server: Connection | None,
                      workers: dict[str, str], verdict: str, reason: str | None = None,
                      bytes_from_client: int = 0, bytes_from_server: int = 0,
                      started: float | None = None, ended: float | None = None,
                      error: str | None = None, **extra: Any) -> dict:
    """A record for a connection that is not an HTTP exchange: who (worker, client), where
    to (the original destination, and SNI when there was TLS), how much each way, for how
    long, and what the proxy did with it. Never any content."""
    client_ip, _ = _address(client, "peername")
    # The destination the worker asked for: transparent mode's original address.
    dst_ip, dst_port = _address(server, "address")
    server_ip, _ = _address(server, "peername")
    sni = getattr(client, "sni", None)
    started = started or getattr(client, "timestamp_start", None) or time.time()
    ended = ended or time.time()
    record: dict[str, Any] = {
        "@timestamp": iso_timestamp(started),
        "record_id": new_record_id(),
        "kind": kind,
        "verdict": verdict,
        "reason": reason,
        "worker_id": workers.get(client_ip or "", UNKNOWN_WORKER),
        "client_ip": client_ip,
        "server_ip": server_ip or dst_ip,
        "proxy_host": PROXY_HOST,
        "host": sni or dst_ip,
        "port": dst_port,
        "sni": sni,
        "tls": bool(getattr(client, "tls", False) or sni),
        "bytes_from_client": bytes_from_client,
        "bytes_from_server": bytes_from_server,
        "duration_ms": round((ended - started) * 1000, 3),
        "error": error,
    }
    record.update(extra)
    return record
