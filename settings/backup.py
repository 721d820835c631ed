"""The backup component's settings: the daily timer and how many backups stay."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from autocode.problems import calendar
from infra.settings import Describe, Settings, checked


class Backup(Settings):
    backup_calendar: Annotated[str, checked(calendar, "*-*-* 02:40:00")] = "*-*-* 02:40:00"
    """When the daily backup runs (systemd OnCalendar)."""
    backup_keep: Annotated[int, Field(ge=1), Describe(
        "a whole number of backups to keep, at least 1", "e.g. 14")] = 14
    """How many backups are kept, the newest."""
