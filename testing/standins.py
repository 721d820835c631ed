"""Stand-in agent executables: small Python scripts that print the documented output
shapes of the agent CLIs and record the argv, environment and working directory they were
started with. The real CLIs need accounts and remote model APIs."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

STANDIN_PRELUDE = f"""#!{sys.executable}
import json, os, sys, time
_record = os.environ.get("STANDIN_RECORD")
if _record:
    with open(_record, "a") as _handle:
        _handle.write(json.dumps({{"argv": sys.argv, "env": dict(os.environ),
                                   "cwd": os.getcwd(), "pid": os.getpid()}}) + "\\n")
"""


def make_standin(directory: Path, name: str, body: str) -> Path:
    """Write an executable stand-in CLI called `name` whose behaviour is `body` (Python)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(STANDIN_PRELUDE + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def read_records(record_file: Path) -> list[dict]:
    if not record_file.exists():
        return []
    return [json.loads(line) for line in record_file.read_text().splitlines() if line]


def pid_is_gone(pid: int) -> bool:
    """True when pid no longer runs (absent, or a zombie waiting for its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")
