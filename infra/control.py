"""What the task service (autocode-control) keeps on the control machine, beside the
inventory: the operator token (made once, 0600, like the Vault and Nomad keys) and the
endpoint file `autocode task` reads, with a copy of the platform CA.

The token never appears in an operation's arguments (pyinfra prints them at -vv), a command
line or a message: the hosts get only its SHA-256 (autocode/control/server.py)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyinfra import host as current_host
from pyinfra.api import FunctionCommand, OperationError, operation

from . import keys_file
from .control_api import per_stage
from .facts import q


class TokenFile(keys_file.KeysFile):
    field = "control_token_file"
    holds = "the operator token of autocode-control"
    if_read = ", then delete it and apply again, which makes a new token"


@dataclass
class OperatorToken:
    """The token of this run: the file's, or one made for this run, which
    `operator_token_kept` saves before any host gets its hash."""

    keys: TokenFile
    _value: str | None = field(default=None, repr=False)

    def value(self) -> str:
        if self._value is None:
            self._value = (self.keys.load() or {}).get("operator_token") or \
                secrets.token_urlsafe(32)
        return self._value

    def sha256(self) -> str:
        return hashlib.sha256(self.value().encode()).hexdigest()


def operator_token(state, path: Path) -> OperatorToken:
    return per_stage(state, "control_token", lambda: OperatorToken(TokenFile(path)))


@operation()
def operator_token_kept(token: OperatorToken):
    """The operator token in its file on the control machine (0600), made once.

    + token: the run's OperatorToken
    """
    if (token.keys.load() or {}).get("operator_token") == token.value():
        current_host.noop(f"the operator token is kept in {token.keys.path}")
        return
    yield FunctionCommand(_keep_token, (token,), {})


def _keep_token(state, host, token: OperatorToken) -> None:
    doc = token.keys.load() or {}
    if doc.get("operator_token") not in (None, token.value()):
        raise OperationError(f"{token.keys.path} got another token while this apply ran (a "
                             "second apply at the same time?); apply again")
    token.keys.save({**doc, "operator_token": token.value()})
    host.log(f"the operator token of autocode-control is kept in {token.keys.path} (0600)")


def _local_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _write_local(path: Path, text: str) -> None:
    staged = path.with_name(path.name + ".new")
    staged.write_text(text)
    os.chmod(staged, 0o644)
    os.replace(staged, path)


@operation()
def endpoint_file_written(path: str, endpoint: dict[str, Any], ca_copy: str,
                          ca_on_host: str, ca_pem: str | None):
    """`autocode task`'s endpoint file on the control machine, and the platform CA copied
    beside it (both public; paths in the file are relative to it).

    + path: the endpoint file (autocode-control.json)
    + endpoint: what it holds, besides `ca_cert`
    + ca_copy: the CA copy's file name, beside it
    + ca_on_host: the CA on the orchestrator, read again when the operation runs
    + ca_pem: the CA as read when planning (None: not made yet)
    """
    target = Path(path)
    text = json.dumps({**endpoint, "ca_cert": ca_copy}, indent=2, sort_keys=True) + "\n"
    if ca_pem and _local_text(target) == text and \
            (_local_text(target.with_name(ca_copy)) or "").strip() == ca_pem.strip():
        current_host.noop(f"{target} is up to date")
        return
    yield FunctionCommand(_write_endpoint, (target, text, ca_copy, ca_on_host), {})


def _write_endpoint(state, host, target: Path, text: str, ca_copy: str,
                    ca_on_host: str) -> None:
    ok, output = host.run_shell_command(f"cat -- {q(ca_on_host)}")
    pem = "\n".join(output.stdout_lines).strip()
    if not ok or "BEGIN CERTIFICATE" not in pem:
        raise OperationError(f"could not read the platform CA {ca_on_host} on {host.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_local(target.with_name(ca_copy), pem + "\n")
    _write_local(target, text)
    host.log(f"{target}: where autocode-control is, for `autocode task`")
