"""mitmproxy addon script: ``mitmdump -s .../autocode/traffic/addon.py
--set autocode_traffic_config=/etc/autocode/traffic.yaml``.

The hooks only build a redacted record and hand it to the background writer; they never
touch the disk or the network, so a slow disk or Elasticsearch cannot slow the proxy.

Every connection gets a record, whatever it carries. HTTP(S) requests as such; anything
else by kind (``tcp``: raw TCP or TLS around another protocol, ``websocket``, ``tls``: a
handshake the client aborted). The ``non_http`` policy decides whether the others are
relayed (``allow``) or refused (``block``, the default): a refused connection is closed
before a byte of it is relayed, and an HTTP upgrade (WebSocket or other) is answered 403
before it reaches the server. A connection the audit log cannot take is not relayed
either, when ``fail_closed``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from mitmproxy import ctx, exceptions, http, tcp, tls
from mitmproxy.proxy import commands, events, layer, layers

from autocode.control.running import OVER_BUDGET_DIR, RunningTasks, mark_over_budget
from autocode.traffic.cache import PackageCache
from autocode.traffic.config import TrafficConfig, TrafficConfigError, load_config
from autocode.traffic.metering import (
    Meter,
    RateLimiter,
    Refused,
    Usage,
    UsageTap,
    error_answer,
    estimate,
    rate_limited_answer,
)
from autocode.traffic.record import UNKNOWN_WORKER, build_record, connection_record, normalise_ip
from autocode.traffic.redact import Redactor
from autocode.traffic.writer import BackgroundWriter

log = logging.getLogger("autocode.traffic")

CONFIG_OPTION = "autocode_traffic_config"
# flow.metadata keys: whether this flow holds a queue slot, was blocked, was logged.
RESERVED = "autocode_reserved"
BLOCKED = "autocode_blocked"
LOGGED = "autocode_logged"
REFUSED = "autocode_refused"  # refused by policy (with the reason): recorded as blocked
WEBSOCKET_LOGGED = "autocode_websocket_logged"
METERED = "autocode_metered"  # (api, worker) of an LLM API call being metered
TAP = "autocode_usage_tap"
REQUEST_FACTS = "autocode_llm_request"  # (model, request bytes) of a metered call
LLM = "autocode_llm"  # the priced call, for its record
TASK = "autocode_task"  # the id of the task its worker runs (autocode-control says)
ADMITTED = "autocode_admitted"  # the worker whose open-flow count this flow holds
CACHE = "autocode_cache"  # hit, or the digest to store the answer under
CACHE_INDEX = "autocode_cache_index"  # the host of an index being read for digests
NON_HTTP_BLOCKED = "non-HTTP traffic is blocked (non_http: block)"
STALLED = "autocode_stalled"  # why a connection was recorded before mitmproxy ended it
SERVER_CLOSED_GRACE_S = 5.0


class RefusedConnection(layer.Layer):
    """In place of the layer that would relay a refused connection: closes both ends at
    once, relaying nothing."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            yield commands.CloseConnection(self.context.client)
            if self.context.server.connected:
                yield commands.CloseConnection(self.context.server)


def refused_response(reason: str) -> http.Response:
    body = f"autocode egress proxy: refused: {reason}. Ask the operator if this is needed.\n"
    return http.Response.make(403, body.encode(), {"Content-Type": "text/plain; charset=utf-8"})


def json_response(status: int, body: dict, **headers: str) -> http.Response:
    # x-should-retry: the providers' SDKs honour it; a refusal is not worth retrying.
    return http.Response.make(status, json.dumps(body).encode(), {
        "Content-Type": "application/json", "x-should-retry": "false", **headers})


def blocked_response(reason: str) -> http.Response:
    body = (
        "autocode egress proxy: request blocked because the traffic audit log cannot "
        f"record it ({reason}). Unaudited egress is not allowed; the operator has been "
        "alerted in the proxy log. Retry later.\n"
    )
    return http.Response.make(
        503, body.encode(), {"Content-Type": "text/plain; charset=utf-8", "Retry-After": "5"}
    )


class AutocodeLogger:
    def __init__(self) -> None:
        self.config: TrafficConfig | None = None
        self.redactor: Redactor | None = None
        self.writer: BackgroundWriter | None = None
        self._config_path: str | None = None
        self.blocked_flows = 0
        self.meter: Meter | None = None
        self.rate_limiter: RateLimiter | None = None
        self.cache: PackageCache | None = None
        self.tasks: RunningTasks | None = None
        self._open_tcp: dict[str, tcp.TCPFlow] = {}  # relayed, not yet recorded

    def load(self, loader) -> None:
        loader.add_option(
            CONFIG_OPTION, str, "",
            "Path of the autocode traffic logger YAML config (see autocode.traffic).",
        )

    def configure(self, updated: set[str]) -> None:
        if CONFIG_OPTION not in updated:
            return
        path = getattr(ctx.options, CONFIG_OPTION)
        if path == self._config_path:
            return
        if not path:
            # Nothing configured: fail closed rather than pass traffic unaudited.
            self._stop_writer()
            self._config_path = None
            log.error("autocode traffic logger has no config: set --set %s=PATH", CONFIG_OPTION)
            return
        try:
            config = load_config(path)
        except TrafficConfigError as exc:
            raise exceptions.OptionsError(str(exc)) from None
        self._stop_writer()
        self.config = config
        metering = config.metering
        if metering is not None:
            self.meter = Meter(metering, log)
            if metering.requests_per_second or metering.max_concurrent:
                self.rate_limiter = RateLimiter(metering.requests_per_second, metering.burst,
                                                metering.max_concurrent)
        if config.package_cache is not None:
            self.cache = PackageCache(config.package_cache, log)
        if config.running_tasks is not None:
            self.tasks = RunningTasks(config.running_tasks)
        self.redactor = Redactor(
            config.redact_headers, config.redact_patterns, config.redact_value_patterns
        )
        self.writer = BackgroundWriter(config)
        self.writer.start()
        self._config_path = path
        log.info(
            "autocode traffic logger: spooling to %s (fail_closed=%s, %d workers known)",
            config.spool_dir, config.fail_closed, len(config.workers),
        )

    def done(self) -> None:
        # Connections still open when the proxy stops are recorded before the writer goes.
        for flow in list(self._open_tcp.values()):
            flow.metadata.setdefault(STALLED, "still open when the proxy stopped")
            self._record_connection(flow)
        self._stop_writer()

    def _stop_writer(self) -> None:
        if self.writer is not None:
            self.writer.stop()
            self.writer = None
        if self.meter is not None:
            self.meter.close()
            self.meter = None
        self.rate_limiter = None
        if self.cache is not None:
            self.cache.close()
            self.cache = None

    # -- flow hooks: plain functions that never block (a coroutine per hook costs more) --

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        writer = self.writer
        if writer is None:
            self._block(flow, "traffic logger not configured")
            return
        fail_closed = self.config.fail_closed
        if not writer.healthy and fail_closed:
            self._block(flow, f"spool unwritable: {writer.last_error}")
            return
        if writer.try_reserve():
            flow.metadata[RESERVED] = True
        elif fail_closed:
            self._block(flow, "audit queue full")
            return
        # An upgrade turns the connection into something that is not HTTP.
        if self.config.non_http == "block" and "upgrade" in flow.request.headers:
            flow.metadata[REFUSED] = (f"HTTP upgrade to {flow.request.headers['upgrade']!r} "
                                      f"refused: {NON_HTTP_BLOCKED}")
            flow.request.stream = False
            flow.response = refused_response(flow.metadata[REFUSED])
            return
        if self.meter is not None or self.rate_limiter is not None:
            self._admit(flow)
        if self.cache is not None and flow.response is None and flow.request.method == "GET":
            self._from_cache(flow)

    def _from_cache(self, flow: http.HTTPFlow) -> None:
        host, path = flow.request.pretty_host, flow.request.path
        key = self.cache.key(host, path)
        # An index (a package document, a Packages file) is read for the digests it gives
        # when fetched; a Packages file fetched by its hash is also cached itself.
        index = self.cache.is_index_document(host, path)
        if key is None:
            if index:
                flow.metadata[CACHE_INDEX] = host
            return
        body = self.cache.lookup(key)
        if body is None:
            if index:
                flow.metadata[CACHE_INDEX] = host
            flow.metadata[CACHE] = key  # fetched: stored once it has arrived whole
            return
        flow.metadata[CACHE] = "hit"
        flow.request.stream = False
        flow.response = http.Response.make(200, body, {
            "Content-Type": "application/octet-stream", "X-Autocode-Cache": "hit"})

    # -- spend metering and rate limits (autocode/traffic/metering.py) -----------------------

    def _worker(self, flow: http.HTTPFlow) -> str:
        peer = flow.client_conn.peername
        ip = normalise_ip(peer[0]) if peer else ""
        return self.config.workers.get(ip, UNKNOWN_WORKER if not ip else ip)

    def _admit(self, flow: http.HTTPFlow) -> None:
        worker = self._worker(flow)
        if self.tasks is not None:
            task = self.tasks.task_of(worker)
            if task is not None:
                flow.metadata[TASK] = task[0]
        meter = self.meter
        request = flow.request
        # Only a POST can be an LLM call: the Host header is parsed for those alone.
        api = meter.match(request.pretty_host, flow.client_conn.sni, request.method,
                          request.path) if meter is not None and request.method == "POST" \
            else None
        if self.rate_limiter is not None:
            wait = self.rate_limiter.admit(worker, time.monotonic())
            if wait is not None:
                flow.metadata[REFUSED] = f"rate limit of worker {worker} exceeded"
                status, body = rate_limited_answer(api.provider if api else None, wait)
                flow.request.stream = False
                flow.response = json_response(status, body, **{"Retry-After": str(wait)})
                return
            flow.metadata[ADMITTED] = worker
        if api is None:
            return
        refusal = meter.refusal(worker)
        if refusal is not None:
            flow.metadata[REFUSED] = refusal
            flow.request.stream = False
            flow.response = json_response(*error_answer(api.provider, refusal))
            return
        flow.metadata[METERED] = (api, worker)

    def request(self, flow: http.HTTPFlow) -> None:
        metered = flow.metadata.get(METERED)
        if metered is None or flow.response is not None:
            return
        api, _ = metered
        content = flow.request.content or b""
        model = None
        try:
            body = json.loads(content) if content else None
        except ValueError:
            body = None
        if isinstance(body, dict):
            model = body.get("model") if isinstance(body.get("model"), str) else None
            # OpenAI streams usage only when asked to; ask, so the call is charged exactly.
            if (api.provider == "openai" and body.get("stream") is True
                    and self.meter.config.inject_stream_usage
                    and not (body.get("stream_options") or {}).get("include_usage")
                    and not flow.request.path.split("?", 1)[0].endswith("/responses")):
                body["stream_options"] = {**(body.get("stream_options") or {}),
                                          "include_usage": True}
                flow.request.content = json.dumps(body).encode()
        flow.metadata[REQUEST_FACTS] = (model, len(content))
        _, worker = metered
        try:
            task = self.tasks.task_of(worker) if self.tasks is not None else None
            refused = self.meter.reserve(flow.id, worker, self.meter.worst_case(
                model, body, len(flow.request.content or b"")), task)
        except Exception:  # the cap cannot be checked: the call does not go out unmetered
            log.exception("autocode meter could not hold flow %s", flow.id)
            refused = Refused("autocode: the proxy could not check this call against its "
                              "budgets; it was not sent (see the proxy's log)")
        if refused is not None:  # its worst case does not fit in what is left
            if refused.task_id is not None and self.config.running_tasks is not None:
                # autocode-control stops the task at its worker's next heartbeat.
                mark_over_budget(self.config.running_tasks.parent / OVER_BUDGET_DIR,
                                 refused.task_id)
            flow.metadata[REFUSED] = refused.text
            flow.response = json_response(*error_answer(api.provider, refused.text))
            return
        # Read as it passes: an encoding the tap cannot undo would leave it blind.
        flow.request.headers["accept-encoding"] = "identity"

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        metered = flow.metadata.get(METERED)
        if metered is None or flow.metadata.get(REFUSED) or flow.response is None:
            return
        api, _ = metered
        model = flow.metadata.get(REQUEST_FACTS, (None, 0))[0]
        tap = UsageTap(api.provider, flow.response.headers.get("content-type", ""),
                       flow.response.headers.get("content-encoding", ""), model)
        flow.metadata[TAP] = tap
        flow.response.stream = tap  # passes every chunk on at once, reading as it goes

    def _meter_done(self, flow: http.HTTPFlow) -> None:
        worker = flow.metadata.pop(ADMITTED, None)
        if worker is not None and self.rate_limiter is not None:
            self.rate_limiter.done(worker)
        metered = flow.metadata.pop(METERED, None)
        if metered is None or self.meter is None:
            return
        if flow.metadata.get(REFUSED):
            self.meter.release(flow.id)  # nothing went upstream: nothing is held or owed
            return
        api, worker = metered
        model, request_bytes = flow.metadata.get(REQUEST_FACTS, (None, 0))
        tap = flow.metadata.pop(TAP, None)
        usage = tap.finish() if tap is not None else Usage(model=model)
        status = flow.response.status_code if flow.response is not None else None
        if status is not None and status >= 400 and not usage.reported:
            usage = Usage(model=usage.model, complete=True)  # an error answer costs nothing
        else:
            estimate(usage, request_bytes,
                     tap.bytes_seen if tap is not None and tap.unreadable else 0)
        try:
            charge = self.meter.charge(flow.id, worker, api.provider, usage,
                                       flow.metadata.get(TASK))
        except Exception:
            log.exception("autocode meter could not price flow %s", flow.id)
            return
        flow.metadata[LLM] = charge.record(self.meter.config.prices_taken_on)

    def response(self, flow: http.HTTPFlow) -> None:
        self._meter_done(flow)
        key = flow.metadata.get(CACHE)
        if key not in (None, "hit") and self.cache is not None and flow.response is not None \
                and flow.response.status_code == 200 and flow.response.raw_content is not None:
            # What the client got, decoded as the URL's digest names it.
            self.cache.store(key, flow.response.get_content(strict=False) or b"")
            flow.metadata[CACHE] = "miss"
        host = flow.metadata.pop(CACHE_INDEX, None)
        if host is not None and self.cache is not None and flow.response is not None \
                and flow.response.status_code == 200 and flow.response.raw_content:
            # Decoded and parsed by the cache's thread, not here.
            self.cache.learn(host, flow.request.path, flow.response.raw_content,
                             flow.response.headers.get("content-encoding", ""))
        self._record(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._meter_done(flow)
        self._record(flow)

    # -- connections that are not HTTP ------------------------------------------------------

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """Refuse a connection about to be relayed as raw TCP, before it is: this runs
        before mitmproxy's own choice of layer, so ask for that choice first."""
        if nextlayer.layer is None:
            chooser = ctx.master.addons.get("nextlayer")
            if chooser is None:
                return
            chooser.next_layer(nextlayer)
        if not isinstance(nextlayer.layer, layers.TCPLayer):
            return
        reason = self._refusal()
        if reason is None:
            return  # relayed; recorded when it ends (tcp_end / tcp_error)
        context = nextlayer.context
        nextlayer.layer = RefusedConnection(context)
        self._submit(connection_record(
            "tcp", context.client, context.server, self.config.workers if self.config else {},
            "blocked", reason, bytes_from_client=len(nextlayer.data_client())), False)

    def _refusal(self) -> str | None:
        """Why a non-HTTP connection must not be relayed now, or None."""
        writer = self.writer
        if writer is None or self.config is None:
            return "traffic logger not configured"
        if not writer.healthy and self.config.fail_closed:
            return f"spool unwritable: {writer.last_error}"
        if self.config.non_http == "block":
            return NON_HTTP_BLOCKED
        return None

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        self._open_tcp[flow.id] = flow
        writer = self.writer
        if writer is not None and writer.try_reserve():
            flow.metadata[RESERVED] = True
        elif self.config is None or self.config.fail_closed:
            # Not yet connected (connection_strategy lazy): it never will be.
            flow.metadata[REFUSED] = "audit queue full"
            flow.server_conn.error = "audit queue full"

    def tcp_end(self, flow: tcp.TCPFlow) -> None:
        self._record_connection(flow)

    def tcp_error(self, flow: tcp.TCPFlow) -> None:
        self._record_connection(flow)

    def server_disconnected(self, data) -> None:
        """A relayed connection whose server side has closed gets its record even if
        mitmproxy never ends the flow: seen on Debian 13, where a server's TLS close that
        mitmproxy read as an error ("tlsv1 alert decode error") left the client side open
        with no tcp_end or tcp_error until the proxy stopped. Normally the flow ends at
        once; this waits a grace period first, so the usual record is the one kept."""
        server_id = data.server.id
        for flow in list(self._open_tcp.values()):
            if flow.server_conn.id == server_id:
                asyncio.get_running_loop().call_later(
                    SERVER_CLOSED_GRACE_S, self._record_stalled, flow.id)

    def _record_stalled(self, flow_id: str) -> None:
        flow = self._open_tcp.get(flow_id)
        if flow is not None and not flow.metadata.get(LOGGED):
            flow.metadata[STALLED] = ("the server closed; the client side was still open "
                                      f"{SERVER_CLOSED_GRACE_S:g} s later")
            self._record_connection(flow)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._record_connection(flow)

    def tls_failed_client(self, data: tls.TlsData) -> None:
        """A client gave up on the TLS handshake with the proxy (it pins a certificate or
        does not trust the proxy's CA): nothing was relayed, but the attempt is recorded."""
        if self.config is None:
            return
        self._submit(connection_record(
            "tls", data.context.client, data.context.server, self.config.workers,
            "client_tls_failed", str(data.conn.error or "TLS handshake failed")), False)

    def _record_connection(self, flow: tcp.TCPFlow | http.HTTPFlow) -> None:
        metadata = flow.metadata
        is_tcp = isinstance(flow, tcp.TCPFlow)
        # A WebSocket's HTTP upgrade has its own record; this one is for the connection.
        done = LOGGED if is_tcp else WEBSOCKET_LOGGED
        if is_tcp:
            self._open_tcp.pop(flow.id, None)
        if metadata.get(done) or self.config is None:
            return
        metadata[done] = True
        reserved = metadata.pop(RESERVED, False) if is_tcp else False
        if is_tcp:
            kind, messages, extra = "tcp", flow.messages, {}
        else:
            messages = flow.websocket.messages if flow.websocket else []
            kind = "websocket"
            extra = {"messages_from_client": sum(1 for m in messages if m.from_client),
                     "messages_from_server": sum(1 for m in messages if not m.from_client),
                     "url": self.redactor.url(flow.request.pretty_url) if self.redactor
                     else None}
        refused = metadata.get(REFUSED)
        try:
            record = connection_record(
                kind, flow.client_conn, flow.server_conn, self.config.workers,
                "blocked" if refused else "allowed", refused,
                bytes_from_client=sum(len(m.content) for m in messages if m.from_client),
                bytes_from_server=sum(len(m.content) for m in messages if not m.from_client),
                started=flow.client_conn.timestamp_start if is_tcp else
                flow.request.timestamp_start,
                error=flow.error.msg if flow.error is not None else metadata.get(STALLED),
                **extra)
        except Exception:
            log.exception("autocode traffic logger could not build a connection record")
            if reserved and self.writer is not None:
                self.writer.release()
            return
        self._submit(record, reserved)

    def _submit(self, record: dict, reserved: bool) -> None:
        writer = self.writer
        if writer is None:
            log.error("autocode traffic logger not configured: %s record lost",
                      record.get("kind"))
            return
        writer.submit(record, reserved)

    def _block(self, flow: http.HTTPFlow, reason: str) -> None:
        flow.metadata[BLOCKED] = True
        flow.request.stream = False  # a response cannot be set on a streamed request
        flow.response = blocked_response(reason)
        self.blocked_flows += 1
        if self.blocked_flows == 1 or self.blocked_flows % 1000 == 0:
            log.error("autocode traffic logger blocked %d flows so far: %s",
                      self.blocked_flows, reason)

    def _record(self, flow: http.HTTPFlow) -> None:
        metadata = flow.metadata
        if metadata.get(BLOCKED) or metadata.get(LOGGED):
            return
        metadata[LOGGED] = True
        reserved = metadata.pop(RESERVED, False)
        writer = self.writer
        if writer is None or self.config is None or self.redactor is None:
            return
        refused = metadata.get(REFUSED)
        try:
            record = build_record(flow, self.config.workers, self.redactor,
                                  "blocked" if refused else "allowed", refused)
            if TASK in metadata:
                record["task_id"] = metadata[TASK]
            if LLM in metadata:
                record["llm"] = metadata[LLM]
            if metadata.get(CACHE) in ("hit", "miss"):
                record["cache"] = metadata[CACHE]
        except Exception:
            # A bug here must not kill the flow; the slot must not leak either.
            log.exception("autocode traffic logger could not build a record")
            if reserved:
                writer.release()
            return
        writer.submit(record, reserved)


addons = [AutocodeLogger()]
