"""Unit tests of pyinfra operations, "facts in, commands out", the way pyinfra tests its own.

The real decorated operation is called through pyinfra's API (`add_op`: a real `State`,
`Inventory` and `Host`s, the current host and state set in pyinfra's context), so the
operation reads `host`, `host.state`, `host.state.inventory` and `fact_once`'s cache exactly
as in a plan; only two things of each host are replaced: `get_fact` answers from the facts
the test gives (and fails loudly, naming the fact, for one it did not give) and `noop`
records its message. Nothing connects anywhere.

    deploy = FakeDeploy({fact(PathStates, paths=("/srv",)): {"/srv": None}})
    result = deploy.run(directory, path="/srv", user="root", group="root", mode="755")
    assert result.commands == ["install -d -o root -g root -m 755 /srv"]
    assert result.noops == []

Commands come back as plain data: a shell command as its string, a FileUploadCommand as
`Upload(content, dest, remote_temp_filename)`, a FunctionCommand as
`Call(function, args, kwargs)` (not run). `result.meta` is the operation's OperationMeta,
to hand to another operation (e.g. `systemd_unit(restart_when=...)`) in the same deploy.

To test what a FunctionCommand's function does when a run executes it, give the hosts it
talks to a `FakeConnection` (`deploy.connect(name, ...)`: scripted shell answers, files
written recorded) and `deploy.call(call)` runs it as pyinfra would, with the state and the
current host.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, NamedTuple

from pyinfra.api import (
    Config,
    FileUploadCommand,
    FunctionCommand,
    Inventory,
    State,
    StringCommand,
)
from pyinfra.api.operation import OperationMeta, add_op
from pyinfra.api.state import StateStage
from pyinfra.connectors.util import CommandOutput, OutputLine
from pyinfra.context import ctx_host, ctx_state

from infra.operations import digest


class MissingFact(AssertionError):
    """An operation asked for a fact the test did not give."""


class Upload(NamedTuple):
    content: str | bytes
    dest: str
    remote_temp_filename: str | None


class Call(NamedTuple):
    function: Any
    args: tuple
    kwargs: dict


class Result(NamedTuple):
    commands: list  # str, Upload, Call, in the order the operation yields them
    noops: list[str]  # the messages passed to host.noop
    meta: OperationMeta


def fact(cls: type, **kwargs) -> tuple:
    """The key of one fact reading: its class and the arguments it is read with."""
    try:
        inspect.signature(cls.command).bind(None, **kwargs)
    except TypeError as e:
        raise TypeError(f"{cls.__name__}.command does not take {kwargs}: {e}") from None
    return (cls, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))


def path_state(kind: str = "file", user: str = "root", group: str = "root",
               mode: str = "644", content: str | bytes | None = None,
               target: str | None = None) -> dict:
    """One path as PathStates (and FolderState's entries) read it; a file's digest is that
    of `content`."""
    return {"type": kind, "user": user, "group": group, "mode": mode,
            "sha256": digest(content or "") if kind == "file" else None,
            "target": target if kind == "link" else None}


def _fact_repr(key: tuple) -> str:
    cls, args = key
    return f"fact({cls.__name__}{''.join(f', {k}={v}' for k, v in args)})"


def describe(command) -> object:
    """A command as plain, comparable data (see the module docstring)."""
    if isinstance(command, str):
        return command
    if isinstance(command, StringCommand):
        return command.get_raw_value()
    if isinstance(command, FileUploadCommand):
        src = command.src
        content = src.getvalue() if hasattr(src, "getvalue") else src
        return Upload(content, command.dest, command.remote_temp_filename)
    if isinstance(command, FunctionCommand):
        return Call(command.function, tuple(command.args), dict(command.kwargs))
    return command


class FakeDeploy:
    """One plan of a deploy on hosts whose facts the test gives.

    + facts: the current host's facts, {fact(Class, **kwargs): value}
    + host: the current host's inventory name
    + others: other inventory hosts' facts by name (for operations that read another host)
    + stage: the state's stage (`fact_once` reads once per stage)
    """

    def __init__(self, facts: Mapping | None = None, *, host: str = "orchestrator",
                 others: Mapping[str, Mapping] | None = None,
                 stage: StateStage = StateStage.Prepare):
        facts_by_host = {host: dict(facts or {}), **{n: dict(f) for n, f in
                                                     (others or {}).items()}}
        self.state = State(Inventory((list(facts_by_host), {})), Config())
        self.state.set_stage(stage)
        self.noops: list[str] = []
        self.asked: list[tuple[str, str]] = []  # (host name, fact(...)) in the order read
        for name, given in facts_by_host.items():
            each = self.state.inventory.get_host(name)
            each.get_fact = self._reader(name, given)
            each.noop = self.noops.append
        self.host = self.state.inventory.get_host(host)

    def _reader(self, name: str, given: dict):
        def get_fact(cls, *args, **kwargs):
            assert not args, f"{cls.__name__} read with positional arguments {args}"
            key = fact(cls, **kwargs)
            self.asked.append((name, _fact_repr(key)))
            if key not in given:
                known = [_fact_repr(k) for k in given if k[0] is cls]
                raise MissingFact(f"{name} was asked {_fact_repr(key)}, which the test does "
                                  f"not give; it gives {known or 'no ' + cls.__name__}")
            return given[key]
        return get_fact

    def connect(self, name: str, connection: FakeConnection) -> FakeConnection:
        """Host `name` runs shell commands and writes files through `connection`."""
        each = self.state.inventory.get_host(name)
        each.run_shell_command = connection.run_shell_command
        each.put_file = connection.put_file
        return connection

    def call(self, call: Call) -> None:
        """Run a FunctionCommand's function as a run would, on the current host."""
        call.function(self.state, self.host, *call.args, **call.kwargs)

    def run(self, op, *args, **kwargs) -> Result:
        """Add the operation for the current host as a plan does (which runs it once to see
        whether it changes anything), then run its command generator to the end."""
        meta = add_op(self.state, op, *args, host=self.host, **kwargs)[self.host]
        op_data = self.state.get_op_data_for_host(self.host, meta._hash)
        del self.noops[:]
        with ctx_state.use(self.state), ctx_host.use(self.host):
            commands = [describe(c) for c in op_data.command_generator()]
        return Result(commands, list(self.noops), meta)


class FakeConnection:
    """A host's shell and file writes for a FunctionCommand's function: `answer(command)`
    gives (ok, stdout) for each command; `commands` and `files` ({dest: content}) record
    what it was asked to do; writing a file succeeds unless `put_ok` is False."""

    def __init__(self, answer=lambda command: (True, ""), put_ok: bool = True):
        self.answer, self.put_ok = answer, put_ok
        self.commands: list[str] = []
        self.files: dict[str, str | bytes] = {}

    def run_shell_command(self, command, **kwargs):
        command = command.get_raw_value() if isinstance(command, StringCommand) else command
        self.commands.append(command)
        ok, stdout = self.answer(command)
        return ok, CommandOutput([OutputLine("stdout", line) for line in stdout.splitlines()])

    def put_file(self, src, dest, **kwargs) -> bool:
        self.files[dest] = src.getvalue() if hasattr(src, "getvalue") else src
        return self.put_ok


def run(op, *args, facts: Mapping | None = None, **kwargs) -> Result:
    """One operation on a host with these facts: FakeDeploy(facts).run(op, ...)."""
    return FakeDeploy(facts).run(op, *args, **kwargs)


def changed(value: bool) -> OperationMeta:
    """An operation's OperationMeta as a plan sees it: will (or will not) change."""
    return OperationMeta(f"fake-{value}", is_change=value)
