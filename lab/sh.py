"""Running commands on the control machine, with errors that say what failed."""

from __future__ import annotations

import shlex
import subprocess


class LabError(RuntimeError):
    """A problem the user can act on; printed without a traceback."""


def run(*argv: str, check: bool = True, input: str | None = None, timeout: float = 600
        ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, input=input, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise LabError(
            f"command failed ({proc.returncode}): {shlex.join(argv)}\n{proc.stderr.strip()}"
        )
    return proc


def ok(*argv: str) -> bool:
    """True when the command succeeds; for probes whose failure is an answer."""
    return subprocess.run(list(argv), capture_output=True).returncode == 0
