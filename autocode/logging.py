"""Loguru set-up for autocode processes (the seed's "Log Retention Policies").

Two sinks:
- console (stderr) at INFO: time, level, message;
- a file under <logs_root>/<component>/<component>_<date>.log, one JSON object per line
  (loguru's serialize=True) with worker_id, project_id and component in record.extra,
  rotated at midnight, kept 30 days, rotated files gzip-compressed.

configure_logging() replaces the sinks it added before, so calling it twice never
duplicates output. It also drops loguru's default stderr sink, which would repeat the
console lines. Both sinks have diagnose off: loguru's variable dumps in tracebacks would
otherwise print whatever secret a local variable held.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from loguru import logger

DEFAULT_LOGS_ROOT = Path("/mnt/data/autocode/logs")
CONSOLE_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {message}"
RETENTION = "30 days"
ROTATION = "00:00"

_lock = threading.Lock()
_our_handler_ids: list[int] = []
_default_sink_removed = False


def configure_logging(
    component: str,
    logs_root: Path | str = DEFAULT_LOGS_ROOT,
    worker_id: str | None = None,
    project_id: str | None = None,
    console: bool = True,
    level: str = "INFO",
    folder: str | None = None,
) -> Path:
    """Install the console and JSON file sinks; return the file sink's directory,
    `folder` (default: the component's name) under logs_root."""
    global _default_sink_removed
    log_dir = Path(logs_root) / (folder or component)
    log_dir.mkdir(parents=True, exist_ok=True)
    with _lock:
        for handler_id in _our_handler_ids:
            logger.remove(handler_id)
        _our_handler_ids.clear()
        if not _default_sink_removed:
            try:
                logger.remove(0)  # loguru's own stderr sink
            except ValueError:
                pass  # someone removed it already
            _default_sink_removed = True

        # Bound for every record from now on, in every module that imports loguru.
        logger.configure(extra={"component": component, "worker_id": worker_id,
                                "project_id": project_id})
        if console:
            _our_handler_ids.append(
                logger.add(sys.stderr, level=level, format=CONSOLE_FORMAT, colorize=False,
                           backtrace=False, diagnose=False)
            )
        _our_handler_ids.append(
            logger.add(
                str(log_dir / f"{component}_{{time:YYYY-MM-DD}}.log"),
                level=level,
                rotation=ROTATION,
                retention=RETENTION,
                compression="gz",
                serialize=True,
                encoding="utf-8",
                # diagnose=True would print local variables in tracebacks: a token or
                # secret held in a local would then reach the log.
                backtrace=False,
                diagnose=False,
            )
        )
    return log_dir


def remove_logging() -> None:
    """Remove the sinks configure_logging() added (at shutdown, or between tests)."""
    with _lock:
        for handler_id in _our_handler_ids:
            logger.remove(handler_id)
        _our_handler_ids.clear()
