"""mitmproxy addon script: ``mitmdump -s .../autocode/traffic/addon.py
--set autocode_traffic_config=/etc/autocode/traffic.yaml``.

The hooks only build a redacted record and hand it to the background writer; they never
touch the disk or the network, so a slow disk or Elasticsearch cannot slow the proxy.
"""

from __future__ import annotations

import logging

from mitmproxy import ctx, exceptions, http

from autocode.traffic.config import TrafficConfig, TrafficConfigError, load_config
from autocode.traffic.record import build_record
from autocode.traffic.redact import Redactor
from autocode.traffic.writer import BackgroundWriter

log = logging.getLogger("autocode.traffic")

CONFIG_OPTION = "autocode_traffic_config"
# flow.metadata keys: whether this flow holds a queue slot, was blocked, was logged.
RESERVED = "autocode_reserved"
BLOCKED = "autocode_blocked"
LOGGED = "autocode_logged"


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
        self._stop_writer()

    def _stop_writer(self) -> None:
        if self.writer is not None:
            self.writer.stop()
            self.writer = None

    # -- flow hooks (async, never block) ----------------------------------------------------

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
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

    async def response(self, flow: http.HTTPFlow) -> None:
        self._record(flow)

    async def error(self, flow: http.HTTPFlow) -> None:
        self._record(flow)

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
        try:
            record = build_record(flow, self.config.workers, self.redactor)
        except Exception:
            # A bug here must not kill the flow; the slot must not leak either.
            log.exception("autocode traffic logger could not build a record")
            if reserved:
                writer.release()
            return
        writer.submit(record, reserved)


addons = [AutocodeLogger()]
