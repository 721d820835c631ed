"""The log forwarding component's settings: how worker logs reach the orchestrator."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from infra.settings import Boolean, Describe, Port, Settings, refuse_unless

CONFDIR = "/etc/autocode/rsyslog"
PROTOCOLS = {
    "relp": "acknowledged, uncompressed (RELP's only compression is TLS's, which Debian's "
            "TLS libraries do not do)",
    "tcp": "syslog over TCP, each line zlib-compressed, not acknowledged",
}


class LogForwarding(Settings):
    log_forwarding_port: Port = 2514
    """The receiver's port on the orchestrator's worker address, for either protocol."""
    log_forwarding_protocol: Annotated[str | None, refuse_unless(
        lambda v: v in PROTOCOLS,
        lambda v: f"{v!r}: choose one of " + "; ".join(
            f"{name} ({why})" for name, why in PROTOCOLS.items()))] = "relp"
    """relp: acknowledged, uncompressed; tcp: compressed, unacknowledged (PROTOCOLS)."""
    log_forwarding_tls: Boolean = True
    """Mutual TLS with the platform CA when the role has it."""
    log_forwarding_queue_max_mb: Annotated[int, Field(ge=16, le=1024 * 1024), Describe(
        "the most disk in MB a worker's queue may use while the orchestrator is away",
        "from 16, e.g. 1024")] = 1024
    """Disk a worker's queue may fill while the orchestrator does not answer."""

    def packages(self, tls: bool) -> list[str]:
        """rsyslog's RELP module, or for TLS over plain syslog TCP its GnuTLS driver."""
        extra = (["rsyslog-relp"] if self.log_forwarding_protocol == "relp"
                 else ["rsyslog-gnutls"] if tls else [])
        return ["rsyslog", *extra, "logrotate"]
