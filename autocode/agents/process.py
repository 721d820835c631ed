"""Run an agent CLI as a child process that cannot hang the worker or exhaust its memory.

- The child starts in its own session, so a timeout kills the whole process group
  (the CLI, the shells and language servers it spawned), not just the direct child.
- stdout is kept up to a byte limit and the rest is drained and counted, so a runaway
  agent writing gigabytes costs CPU time, not memory; stderr keeps only its tail.
- Whatever the exit, leftover members of the group are killed: an agent's background
  processes never outlive its task.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

_READ_CHUNK = 64 * 1024
_READER_JOIN_S = 5.0


class Terminated(Exception):
    """SIGTERM arrived (the worker is being stopped): raised in the main thread so the
    stack unwinds and the running agent's process group is killed on the way."""


@dataclass
class ProcessOutcome:
    returncode: int | None
    stdout: bytes
    stdout_total_bytes: int
    stderr_tail: bytes
    stderr_total_bytes: int
    timed_out: bool
    duration_s: float
    cancelled: bool = False

    @property
    def stdout_truncated(self) -> bool:
        return self.stdout_total_bytes > len(self.stdout)

    def stderr_text(self) -> str:
        return self.stderr_tail.decode("utf-8", errors="replace")


class _Capture(threading.Thread):
    """Drains a pipe, counting every byte and keeping at most about `limit` of them."""

    def __init__(self, fd: int, limit: int, observe: Callable[[bytes], None] | None = None):
        super().__init__(daemon=True)
        self._fd, self._limit, self._observe = fd, limit, observe
        self.data = bytearray()
        self.total = 0

    def run(self) -> None:
        while chunk := _read(self._fd):
            self.total += len(chunk)
            self._keep(chunk)
            if self._observe is not None:
                self._observe(chunk)

    def _keep(self, chunk: bytes) -> None:
        raise NotImplementedError


class _HeadCapture(_Capture):
    """Keeps the first `limit` bytes of a pipe and drains the rest."""

    def _keep(self, chunk: bytes) -> None:
        room = self._limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]


class _TailCapture(_Capture):
    """Keeps the last `limit` bytes of a pipe."""

    def _keep(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > 2 * self._limit:  # trim in batches, not per chunk
            del self.data[: len(self.data) - self._limit]


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, _READ_CHUNK)
    except OSError:
        return b""


def kill_process_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        # Not one process of the group could be signalled: an agent under another account
        # and a worker without CAP_KILL. Say so; the agent runs on until it ends.
        logger.error("cannot signal the agent's process group {}: no permission (a worker "
                     "running its agent as another account needs CAP_KILL)", pgid)


def run_bounded(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | str,
    timeout_s: float,
    max_stdout_bytes: int,
    stderr_tail_bytes: int = 16 * 1024,
    kill_grace_s: float = 5.0,
    cancel: threading.Event | None = None,
    on_output: Callable[[bytes], None] | None = None,
    account: tuple[int, int] | None = None,
) -> ProcessOutcome:
    """Run argv to completion, timeout or `cancel` (its whole group is killed within a
    fraction of a second of it being set). `on_output` sees every chunk of stdout and
    stderr as it comes (the live log), from the reader threads. Raises OSError only if it
    cannot start at all. `account` (uid, gid): the child runs as that user and group, with
    no supplementary groups and no capabilities (needs root or CAP_SETUID and CAP_SETGID)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        list(argv) if account is None else as_account(argv, *account),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(cwd),
        env=dict(env),
        start_new_session=True,  # own process group: pgid == pid
    )
    assert proc.stdout is not None and proc.stderr is not None
    out = _HeadCapture(proc.stdout.fileno(), max_stdout_bytes, on_output)
    err = _TailCapture(proc.stderr.fileno(), stderr_tail_bytes, on_output)
    out.start()
    err.start()

    timed_out = cancelled = False
    deadline = started + timeout_s
    try:
        while True:
            try:
                proc.wait(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                if cancel is not None and cancel.is_set():
                    cancelled = True
                elif time.monotonic() >= deadline:
                    timed_out = True
                else:
                    continue
                raise
    except subprocess.TimeoutExpired:
        kill_process_group(proc.pid, signal.SIGTERM)  # let the CLI save its state
        try:
            proc.wait(timeout=kill_grace_s)
        except subprocess.TimeoutExpired:
            pass
    finally:
        # Also reaps grandchildren that still hold our pipes open.
        kill_process_group(proc.pid, signal.SIGKILL)
        proc.wait()
        for reader, pipe in ((out, proc.stdout), (err, proc.stderr)):
            reader.join(_READER_JOIN_S)
            if not reader.is_alive():  # a process that left our group may still hold it
                pipe.close()

    return ProcessOutcome(
        returncode=proc.returncode,
        stdout=bytes(out.data),
        stdout_total_bytes=out.total,
        stderr_tail=bytes(err.data),
        stderr_total_bytes=err.total,
        timed_out=timed_out,
        duration_s=time.monotonic() - started,
        cancelled=cancelled,
    )


def as_account(argv: Sequence[str], uid: int, gid: int) -> list[str]:
    """argv run as uid/gid through util-linux's setpriv, which then execs it in the same
    process (so its group and the kill path are unchanged). setpriv rather than Popen's
    user/group: a worker that is not root holds CAP_SETUID and CAP_SETGID as ambient
    capabilities, which a uid change between two non-root accounts keeps and exec passes
    on; setpriv clears the ambient and inheritable sets, so the agent holds none and cannot
    become its worker again."""
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    return [setpriv, f"--reuid={int(uid)}", f"--regid={int(gid)}", "--clear-groups",
            "--inh-caps=-all", "--ambient-caps=-all", "--", *argv]
