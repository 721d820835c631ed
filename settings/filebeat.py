"""The filebeat component's settings: the platform's log files to Elasticsearch."""

from __future__ import annotations

import re
from typing import Annotated

from infra.settings import Boolean, Describe, Settings, Version, refuse_unless


class Filebeat(Settings):
    filebeat_enabled: Boolean = True
    """Filebeat on the orchestrator (only where elasticsearch_mode is not none)."""
    filebeat_version: Annotated[Version, Describe(
        "a version", "pin one that Elastic's apt repository has, e.g. 8.19.0")] = "8.19.0"
    """Filebeat's package version, pinned."""
    log_environment: Annotated[str, refuse_unless(
        lambda v: bool(re.fullmatch(r"[A-Za-z0-9_.-]+", v)),
        lambda v: f"{v!r}: give a short name for this site's logs, e.g. production"),
        Describe("a short name", "give a short name for this site's logs, e.g. "
                                 "production")] = "production"
    """The `environment` field of every log event."""
