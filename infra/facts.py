"""pyinfra facts for state our components own on the hosts.

Each fact answers for a whole set of items in one command (one SSH round trip), and
`fact_once` lets several operations share one reading: a re-apply's time is mostly round
trips, and pyinfra 3 caches no fact.
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import json
import shlex
from collections.abc import Callable, Iterable

from pyinfra import host
from pyinfra.api import FactBase
from pyinfra.api.state import StateStage

# iptables-save output, minus comments and packet counters: what the kernel enforces.
_NORMALISE = "grep -v '^#' | sed -E 's/\\[[0-9]+:[0-9]+\\]//g' | sha256sum | cut -c1-64"

# One line per path: path, type, owner, group, mode, then a symlink's target or a regular
# file's sha256 ("-" for anything else); or "path<TAB>missing".
_STAT_FUNCTION = (
    "_st() { if [ -L \"$1\" ] || [ -e \"$1\" ]; then printf '%s\\t' \"$1\"; "
    "stat --printf '%F\\t%U\\t%G\\t%a\\t' -- \"$1\"; "
    "if [ -L \"$1\" ]; then readlink -- \"$1\"; "
    "elif [ -f \"$1\" ]; then sha256sum -- \"$1\" | cut -c1-64; else echo -; fi; "
    "else printf '%s\\tmissing\\n' \"$1\"; fi; }"
)
_TYPES = {"directory": "directory", "regular file": "file", "regular empty file": "file",
          "symbolic link": "link"}


def q(value: object) -> str:
    """A value quoted for the remote shell."""
    return shlex.quote(str(value))


def live_ruleset_digest_command(family: int) -> str:
    save = "iptables-save" if family == 4 else "ip6tables-save"
    return f"{save} | {_NORMALISE}"


def _parse_stat_lines(lines: Iterable[str]) -> dict[str, dict | None]:
    states: dict[str, dict | None] = {}
    for line in lines:
        parts = line.rstrip("\n").split("\t")
        if len(parts) == 2 and parts[1] == "missing":
            states[parts[0]] = None
        elif len(parts) == 6:
            path, kind, user, group, mode, extra = parts
            kind = _TYPES.get(kind, kind)
            states[path] = {
                "type": kind, "user": user, "group": group, "mode": mode,
                "sha256": extra if kind == "file" else None,
                "target": extra if kind == "link" else None,
            }
    return states


class PathStates(FactBase):
    """Type, owner, group, mode, and a file's sha256 or a link's target, of each path;
    None for a path that does not exist. One command for all of them."""

    default = dict

    def command(self, paths: tuple[str, ...]) -> str:
        quoted = " ".join(q(p) for p in paths)
        return f"{_STAT_FUNCTION}; for p in {quoted}; do _st \"$p\"; done"

    def process(self, output):
        return _parse_stat_lines(output)


class FolderState(FactBase):
    """A folder's own state and that of every entry in it, as PathStates gives them:
    {"folder": state or None, "entries": {name: state}}."""

    def command(self, path: str) -> str:
        return (f"{_STAT_FUNCTION}; _st {q(path)}; for p in {q(path)}/* {q(path)}/.[!.]*; "
                "do [ -e \"$p\" ] || [ -L \"$p\" ] || continue; _st \"$p\"; done")

    def process(self, output):
        states = _parse_stat_lines(output)
        folder_path = next(iter(states), None)
        folder = states.pop(folder_path) if folder_path is not None else None
        entries = {path.rsplit("/", 1)[-1]: state for path, state in states.items()}
        return {"folder": folder, "entries": entries}

    @staticmethod
    def default():
        return {"folder": None, "entries": {}}


class UnitState(FactBase):
    """A systemd unit: its file's sha256, the inputs digest it was last (re)started with,
    and whether it is active and enabled."""

    def command(self, unit: str, path: str, marker: str) -> str:
        return (f"printf 'unit=%s\\n' \"$(sha256sum -- {q(path)} 2>/dev/null | cut -c1-64)\"; "
                f"printf 'started=%s\\n' \"$(cat -- {q(marker)} 2>/dev/null)\"; "
                f"printf 'active=%s\\n' \"$(systemctl is-active -- {q(unit)} 2>/dev/null)\"; "
                f"printf 'enabled=%s\\n' \"$(systemctl is-enabled -- {q(unit)} 2>/dev/null)\"")

    def process(self, output):
        values = dict(line.split("=", 1) for line in output if "=" in line)
        return {key: (values.get(key) or "").strip() or None
                for key in ("unit", "started", "active", "enabled")}


class UnitStates(FactBase):
    """UnitState of several units in one command: {unit: state}."""

    default = dict

    def command(self, units: tuple[tuple[str, str, str], ...]) -> str:
        one = UnitState()
        return "; ".join(f"echo {q('@' + unit)}; {one.command(unit, path, marker)}"
                         for unit, path, marker in units)

    def process(self, output):
        groups: dict[str, list[str]] = {}
        current = None
        for line in output:
            if line.startswith("@"):
                current = groups.setdefault(line[1:].strip(), [])
            elif current is not None:
                current.append(line)
        return {unit: UnitState().process(lines) for unit, lines in groups.items()}


class Accounts(FactBase):
    """System accounts and groups by name: {"users": {name: {"group", "home", "shell"}},
    "groups": {name, ...}}, for the names asked about that exist."""

    def command(self, names: tuple[str, ...]) -> str:
        quoted = " ".join(q(n) for n in names)
        return (f"for n in {quoted}; do getent passwd \"$n\" | sed 's/^/user:/'; "
                "getent group \"$n\" | sed 's/^/group:/'; "
                "id -gn \"$n\" 2>/dev/null | sed \"s/^/primary:$n:/\"; done; true")

    def process(self, output):
        users: dict[str, dict] = {}
        groups: set[str] = set()
        primary: dict[str, str] = {}
        for line in output:
            kind, _, rest = line.partition(":")
            fields = rest.split(":")
            if kind == "user" and len(fields) >= 7:
                users[fields[0]] = {"home": fields[5], "shell": fields[6]}
            elif kind == "group" and fields:
                groups.add(fields[0])
            elif kind == "primary" and len(fields) == 2:
                primary[fields[0]] = fields[1]
        for name, info in users.items():
            info["group"] = primary.get(name)
        return {"users": users, "groups": groups}

    @staticmethod
    def default():
        return {"users": {}, "groups": set()}


class Sysctls(FactBase):
    """Current values of the named kernel settings, and the sha256 of a persist file."""

    def command(self, keys: tuple[str, ...], persist_file: str) -> str:
        quoted = " ".join(q(k) for k in keys)
        return (f"for k in {quoted}; do printf '%s=%s\\n' \"$k\" \"$(sysctl -n \"$k\" "
                "2>/dev/null)\"; done; "
                f"printf 'file=%s\\n' \"$(sha256sum -- {q(persist_file)} 2>/dev/null | "
                "cut -c1-64)\"")

    def process(self, output):
        values = dict(line.split("=", 1) for line in output if "=" in line)
        return {key: value.strip() for key, value in values.items()}


class FirewallState(FactBase):
    """The live ruleset's digest, and what the last load recorded in its marker file:
    the digest of the rules file it loaded and of the live ruleset right after loading.
    Any difference means the file changed or someone changed the rules by hand."""

    def command(self, family: int, marker: str) -> str:
        return (f"{live_ruleset_digest_command(family)}; "
                f"cat -- {q(marker)} 2>/dev/null || true")

    def process(self, output):
        lines = [line for line in output if line.strip()]
        marker = lines[1].split() if len(lines) > 1 else []
        return {
            "live": lines[0].strip() if lines else None,
            "file": marker[0] if len(marker) == 2 else None,
            "loaded": marker[1] if len(marker) == 2 else None,
        }


class DefaultGateways(FactBase):
    """IPv4 default routes' gateways, from `ip -j route`."""

    default = list

    def command(self) -> str:
        return "ip -j -4 route show default"

    def process(self, output):
        try:
            routes = json.loads("\n".join(output) or "[]")
        except ValueError:
            return []
        return [r.get("gateway") for r in routes if r.get("gateway")]


class PythonVersion(FactBase):
    """The host's python3 as [major, minor], or None without one: what the runtime's
    venv is built on, so pins that need a newer Python follow it."""

    def command(self) -> str:
        return "python3 -c 'import sys; print(*sys.version_info[:2])' 2>/dev/null || true"

    def process(self, output):
        parts = " ".join(output).split()
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            return [int(parts[0]), int(parts[1])]
        return None


class FileText(FactBase):
    """A text file's contents, or None when it does not exist or is empty."""

    def command(self, path: str) -> str:
        return f"cat -- {q(path)} 2>/dev/null || true"

    def process(self, output):
        text = "\n".join(output).strip()
        return text + "\n" if text else None


def fact_once(host, cls: type[FactBase], **kwargs):
    """host.get_fact, read once per host and stage (plan, then execution).

    For a fact about a set of items that several operations read, where each operation
    changes only its own item: the reading stays true for the others. The cache lives on
    the run's state, keyed by host name: `pyinfra.host` is a proxy shared by all hosts."""
    state = host.state
    cache = state.__dict__.setdefault("_autocode_facts", {})
    key = (host.name, state.current_stage, cls,
           tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    if key not in cache:
        cache[key] = host.get_fact(cls, **kwargs)
    return cache[key]


# -- one reading per host for the whole run ----------------------------------------------
# Most of a no-change re-apply's time was one round trip per operation (operations run one
# after another, each waiting for its slowest host). Each operation says, when it is added,
# which items of an item fact it will read (`reads`); on a host where no operation has
# changed anything yet in this run, the first reading answers for every item the host's
# operations will read. After the first change, each reads for itself again (`fact_once`),
# so nothing is answered from before a change.


def reads(cls: type[FactBase], items: Callable[[dict], Iterable]):
    """Decorates a pyinfra operation: `items(arguments)` are the items of `cls` it reads,
    recorded for the current host when the operation is added to the plan."""

    def decorate(op):
        signature = inspect.signature(op._inner)

        @functools.wraps(op)
        def add(*args, **kwargs):
            mine = {k: v for k, v in kwargs.items() if k in signature.parameters}
            bound = signature.bind_partial(*args, **mine)
            bound.apply_defaults()
            registry = host.state.__dict__.setdefault("_autocode_reads", {})
            registry.setdefault((host.name, cls), set()).update(items(bound.arguments))
            return op(*args, **kwargs)

        return add

    return decorate


def read_items(on_host, cls: type[FactBase], **items_argument):
    """`cls` read for one argument's items (PathStates' paths, UnitStates' units), as
    `fact_once`; while executing on a host nothing has changed yet, from the one reading
    of every item its operations registered with `reads`."""
    [(argument, items)] = items_argument.items()
    state = on_host.state
    registered = state.__dict__.get("_autocode_reads", {}).get((on_host.name, cls), set())
    if (state.current_stage == StateStage.Execute and set(items) < registered
            and not _changed_yet(on_host)):
        return fact_once(on_host, cls, **{argument: tuple(sorted(registered))})
    return fact_once(on_host, cls, **items_argument)


def _changed_yet(on_host) -> bool:
    state = on_host.state
    real = state.inventory.get_host(on_host.name)
    return any(data.operation_meta.is_complete() and data.operation_meta.did_change()
               for data in state.ops.get(real, {}).values())


class CertificateState(FactBase):
    """A certificate's expiry (epoch seconds), its subject alternative names, whether it
    verifies against a CA and whether a key file holds its key; None when it is missing."""

    def command(self, cert: str, key: str, ca_cert: str) -> str:
        c, k, ca = q(cert), q(key), q(ca_cert)
        return (
            f"[ -s {c} ] || {{ echo missing; exit 0; }}; "
            f"echo \"end $(date -d \"$(openssl x509 -noout -enddate -in {c} | cut -d= -f2)\" "
            "+%s)\"; "
            f"echo \"san $(openssl x509 -noout -ext subjectAltName -in {c} 2>/dev/null "
            "| tail -n +2 | tr -d ' ')\"; "
            f"if openssl verify -CAfile {ca} {c} >/dev/null 2>&1; then echo verify ok; "
            "else echo verify fail; fi; "
            f"a=$(openssl x509 -noout -pubkey -in {c} | sha256sum); "
            f"b=$(openssl pkey -pubout -in {k} 2>/dev/null | sha256sum); "
            "if [ \"$a\" = \"$b\" ]; then echo key ok; else echo key fail; fi"
        )

    def process(self, output):
        lines = [line.strip() for line in output]
        if not lines or lines[0] == "missing":
            return None
        state = {"end": 0, "sans": [], "verifies": False, "key_matches": False}
        for line in lines:
            word, _, rest = line.partition(" ")
            if word == "end":
                state["end"] = int(rest) if rest.isdigit() else 0
            elif word == "san":
                state["sans"] = sorted(s for s in rest.split(",") if s)
            elif word == "verify":
                state["verifies"] = rest == "ok"
            elif word == "key":
                state["key_matches"] = rest == "ok"
        return state


class SshClientAddress(FactBase):
    """The address this host sees the control machine's SSH connection come from."""

    def command(self) -> str:
        return 'echo "${SSH_CLIENT%% *}"'

    def process(self, output):
        return "".join(output).strip() or None


def management_networks(configured: list[str] | None) -> list[str]:
    """Who may reach management services: the configured networks (normalised), else the
    control machine's address as this host sees its SSH connection (none when not over
    SSH: only the host itself, and the workers where a service is theirs too)."""
    if configured is not None:
        return [str(ipaddress.ip_network(str(n))) for n in configured]
    try:
        address = ipaddress.ip_address(host.get_fact(SshClientAddress) or "")
    except ValueError:
        return []
    return [f"{address}/32"] if address.version == 4 else []


class MemoryMB(FactBase):
    """The host's memory in MB, from /proc/meminfo (no procps needed); None if unreadable."""

    def command(self) -> str:
        return "awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo"

    def process(self, output):
        text = "".join(output).strip()
        return int(text) if text.isdigit() else None
