"""A JSON file of secrets on the control machine (a service's keys and tokens): 0600 from
its first byte, replaced atomically, refused when other users may read it. Each service
that keeps one says, in a subclass, which setting names the file and what it holds."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pyinfra.api import OperationError


class KeysFile:
    field = "keys_file"  # the setting that names it, for messages
    holds = "secrets"  # what it holds, for messages
    if_read = ""  # what to do when someone else may have read it
    error: type[Exception] = OperationError

    def __init__(self, path: Path | str):
        self.path = Path(path).expanduser()

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict[str, Any] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        if st.st_mode & 0o077:
            raise self.error(
                f"{self.field}: {self.path} is open to other users (mode "
                f"{st.st_mode & 0o777:04o}); it holds {self.holds}: chmod 600 it{self.if_read}")
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise self.error(f"{self.field}: {self.path} cannot be read as JSON "
                             f"({type(exc).__name__}); restore it from your copy") from None
        if not isinstance(doc, dict):
            raise self.error(f"{self.field}: {self.path} is not a JSON object")
        return doc

    def save(self, doc: dict[str, Any]) -> None:
        """Atomically, 0600 from the first byte, flushed to disk before it replaces the
        old file: losing these keys can lose what they protect."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staged = self.path.with_name(self.path.name + ".new")
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(staged, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
