"""Typed settings: each component's one model, whose fields' defaults are the group data and
whose errors are the validation pass's lines (host, field, problem, fix).

A model is a pydantic model (pydantic 2, strict): it is on every control machine already,
as a dependency of pyinfra 3 itself; strict mode reads YAML's types as they are (no "30"
for 30, no true for 1, no .nan for a number), models nest (agent_limits, a serving
model), and one schema gives each setting's type, range, default and comment. The runtime
on the hosts keeps its own dataclass parsers (no extra dependency in every host's venv);
both report through the one problem module, autocode/problems.py.

A field is declared with its type (often one of the annotated types below), its default and
one line of comment as its docstring:

    class Dns(Settings):
        dns_port: Port = 53
        \"""The forwarder's port, TCP and UDP.\"""

`Describe(what, fix)` says what a valid value is ("a number of days") and how to put a bad
one right; a check of our own (`checked(...)`) raises `SettingProblem` with its whole
message. `For("worker")` gives a field to one role's group data only. Rules that span
several fields (or components) are a model's `rules()`, run after its fields passed.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from autocode.problems import Problems

S = TypeVar("S", bound="Settings")


class SettingProblem(ValueError):
    """A value a check of our own refused: each problem a (part, text) pair, `part` what
    follows the field's name ("", "[0].host", ".m.input") and `text` the whole message
    (problem; fix)."""

    def __init__(self, *problems: str | tuple[str, str]) -> None:
        self.problems = [p if isinstance(p, tuple) else ("", p) for p in problems]
        super().__init__(self.problems[0][1])


@dataclass(frozen=True)
class Describe:
    """What a valid value of the field is, and the fix for a bad one (default: an example,
    the field's default)."""

    what: str
    fix: str | None = None


@dataclass(frozen=True)
class For:
    """The field is one role's: only that role's group data has it, and only that role's
    hosts check it."""

    role: str


def checked(check: Callable[..., Any], *args: Any) -> AfterValidator:
    """A field check from autocode/problems.py (or of that shape: problems, field, value,
    *args), as a validator that refuses with the check's own message."""

    def run(value):
        found = Problems()
        check(found, "", value, *args)
        if found:
            raise SettingProblem(*((p.field, p.text) for p in found))
        return value

    return AfterValidator(run)


def refuse_unless(test: Callable[[Any], bool], message: Callable[[Any], str]) -> AfterValidator:
    """A validator: `message(value)` (the problem; fix) unless `test(value)`."""

    def run(value):
        if not test(value):
            raise SettingProblem(message(value))
        return value

    return AfterValidator(run)


class HostSettings:
    """One host's settings, typed: `settings[Base]` is its Base model (built once). The
    deploy makes one per host and stage (`HostSettings.of(host)`); a model's `rules()`
    gets one too, with the host's role and name, where `get` gives None for a model that
    did not pass its own checks.

    + data: the host's merged data (group data, inventory, --data)
    + role, name: the host's, when known
    """

    def __init__(self, data: Mapping[str, Any], role: str | None = None,
                 name: str | None = None) -> None:
        self.data = data
        self.role = role
        self.name = name
        self._models: dict[type, Any] = {}

    @classmethod
    def of(cls, host) -> HostSettings:
        """A pyinfra host's settings, read once per run and stage; the validation pass has
        refused bad ones before any host was contacted."""
        state = host.state
        cache = state.__dict__.setdefault("_autocode_settings", {})
        key = (host.name, state.current_stage)
        if key not in cache:
            role = "orchestrator" if "orchestrator" in host.groups else "worker"
            cache[key] = cls(host.data.dict(), role, host.name)
        return cache[key]

    def __getitem__(self, model: type[S]) -> S:
        if self._models.get(model) is None:
            self._models[model] = model.from_data(self.data)
        return self._models[model]

    def get(self, model: type[S]) -> S | None:
        if model not in self._models:
            self._models[model] = model.parse(self.data, Problems(), self.role)
        return self._models[model]


class Settings(BaseModel):
    """A component's settings; each field's docstring is its one line of comment."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, allow_inf_nan=False,
                              validate_default=True, use_attribute_docstrings=True,
                              regex_engine="python-re")
    # -- reading ------------------------------------------------------------------------

    @classmethod
    def of(cls: type[S], host) -> S:
        """This pyinfra host's settings (HostSettings.of(host)[cls])."""
        return HostSettings.of(host)[cls]

    @classmethod
    def from_data(cls: type[S], data: Mapping[str, Any]) -> S:
        """From merged host data that passed the validation pass (a bad value is a bug
        here, so it raises)."""
        return cls.model_validate(data)

    @classmethod
    def parse(cls: type[S], data: Mapping[str, Any], problems: Problems,
              role: str | None = None) -> S | None:
        """From a host's merged data: the model, or None with its problems added. Fields
        of another role than `role` are not checked."""
        mine = {k: v for k, v in data.items() if k in cls.model_fields
                and role_of(cls.model_fields[k]) in (None, role)} if role else dict(data)
        try:
            return cls.model_validate(mine)
        except ValidationError as exc:
            seen = set()
            for error in exc.errors():
                for field, problem, fix in _explain(cls, error):
                    # A union's members each refuse: one line for the field.
                    if field not in seen or error.get("ctx", {}).get("error"):
                        problems.add(field, problem, fix)
                    seen.add(field)
            return None

    def rules(self, problems: Problems, host: HostSettings) -> None:
        """Checks that span several fields or components, run once every field passed;
        a subclass adds its own."""

    # -- declaring ----------------------------------------------------------------------

    @classmethod
    def defaults(cls, role: str | None = None) -> dict[str, Any]:
        """Defaults for group data: every host's (role None), or one role's own fields."""
        return {name: copy.deepcopy(info.default) for name, info in cls.model_fields.items()
                if role_of(info) == role}

    @classmethod
    def roles(cls) -> set[str]:
        return {r for info in cls.model_fields.values() if (r := role_of(info))}


class NoSettings(Settings):
    """For a component with no settings of its own."""


def role_of(info: FieldInfo) -> str | None:
    return next((m.role for m in info.metadata if isinstance(m, For)), None)


# -- errors into lines -------------------------------------------------------------------------


def _explain(model: type[BaseModel], error: dict) -> list[tuple[str, str, str]]:
    """(field, problem, fix) for one pydantic error: a check of our own says it whole; a
    type or range error reads "<value> is not <what>" with the field's fix."""
    loc = [part for part in error["loc"] if not _union_tag(part)]
    path, info = _field_at(model, loc)
    ctx = error.get("ctx") or {}
    if isinstance(ctx.get("error"), SettingProblem):
        return [(path + part, *_split(text)) for part, text in ctx["error"].problems]
    if error["type"] == "extra_forbidden":
        return [(path, "no such setting", f"use {', '.join(_siblings(model, loc))}")]
    described = next((m for m in reversed(info.metadata) if isinstance(m, Describe)),
                     None) if info else None
    what = described.what if described else _what(info, error)
    fix = described.fix if described and described.fix is not None else _example(info)
    return [(path, f"{error['input']!r} is not {what}", fix)]


def _split(text: str) -> tuple[str, str]:
    problem, _, fix = text.partition("; ")
    return problem, fix


def _union_tag(part) -> bool:
    # pydantic names the member of a union that refused: "int", "float", "list[str]", ...
    return isinstance(part, str) and (part in ("int", "float", "str", "bool", "none")
                                      or "[" in part or part.startswith(("function-",
                                                                         "constrained-")))


def _field_at(model: type[BaseModel], loc: list) -> tuple[str, FieldInfo | None]:
    """The dotted path ("agent_limits.max_turns", "serving_models[1].name") and the
    innermost declared field. A scalar list's index is left out: the field is the list."""
    path, info, current = "", None, model
    for i, part in enumerate(loc):
        if isinstance(part, int):
            if i + 1 < len(loc):
                path += f"[{part}]"
            continue
        path += f".{part}" if path else str(part)
        fields = getattr(current, "model_fields", {}) if isinstance(current, type) else {}
        if part in fields:
            info = fields[part]
            current = _model_inside(info.annotation)
        else:
            current = None
    return path, info


def _model_inside(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_inside(arg)
        if found:
            return found
    return None


def _siblings(model: type[BaseModel], loc: list) -> list[str]:
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, str) and isinstance(current, type):
            info = current.model_fields.get(part)
            current = _model_inside(info.annotation) if info else None
    return sorted(getattr(current, "model_fields", {}))


def _what(info: FieldInfo | None, error: dict) -> str:
    kind = error["type"]
    if kind == "bool_type":
        return "true or false"
    if kind == "literal_error":
        return f"one of {error['ctx']['expected']}"
    low = high = above = None
    for m in (info.metadata if info else ()):
        low = getattr(m, "ge", None) if getattr(m, "ge", None) is not None else low
        high = getattr(m, "le", None) if getattr(m, "le", None) is not None else high
        above = getattr(m, "gt", None) if getattr(m, "gt", None) is not None else above
    whole = info is not None and info.annotation is int
    noun = "a whole number" if whole else "a number"
    if low is not None and high is not None:
        return f"{noun} from {low} to {high}"
    if low is not None:
        return f"{noun} >= {low}"
    if above is not None:
        return f"{noun} > {above}"
    if kind.startswith(("int", "float", "greater", "less", "finite")):
        return noun
    if kind == "string_type":
        return "a string"
    if kind == "list_type":
        return "a list"
    if kind in ("dict_type", "model_type"):
        return "a mapping"
    return "valid here"


def _example(info: FieldInfo | None) -> str:
    if info is None or info.default is None or isinstance(info.default, dict | list):
        return ""
    default = str(info.default).lower() if isinstance(info.default, bool) else info.default
    return f"e.g. {default}"


# -- the shared vocabulary of types ------------------------------------------------------------

# A plain path on the hosts: it goes into commands and unit files.
SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/@+-]*\Z")
VERSION = r"^[0-9]+\.[0-9]+\.[0-9]+\Z"
PEM_CERT = b"-----BEGIN CERTIFICATE-----"

Port = Annotated[int, Field(ge=1, le=65535),
                 Describe("a port", "use a whole number from 1 to 65535")]
Number = Annotated[int | float, Describe("a number")]
Boolean = Annotated[bool, Describe("true or false", "write true or false unquoted")]
# x.y.z, as the vendors' apt repositories and PyPI have them.
Version = Annotated[str, Field(pattern=VERSION), Describe("a version", "pin one, e.g. 1.2.3")]


def abs_path(example: str):
    """An absolute path on the hosts, other than /, with no character a shell or a unit
    file reads specially."""
    return Annotated[str, refuse_unless(
        lambda v: bool(SAFE_PATH.match(v) and v.rstrip("/")),
        lambda v: f"{v!r} must be an absolute path other than /, of letters, digits and "
                  f". _ / @ + -; e.g. {example}"),
        Describe("an absolute path", f"e.g. {example}")]


def days(low: int, high: int, example: int | None = None):
    return Annotated[int, Field(ge=low, le=high),
                     Describe(f"a whole number of days from {low} to {high}",
                              f"e.g. {example}" if example is not None else None)]


def choice(options: Mapping[str, str], what: str):
    """One of `options` (name -> what it does), e.g. a mode."""
    fix = "use " + "; or ".join(f"{name} ({does})" for name, does in options.items())
    return Annotated[Literal[tuple(options)], Describe(what, fix)]  # type: ignore[misc]


def _pem_files(problems: Problems, field: str, value) -> None:
    for cert in value or ():
        path = Path(str(cert)).expanduser()
        if not path.is_file():
            problems.add(field, f"{cert} does not exist", "give the path of a PEM "
                         "certificate on the control machine")
        elif PEM_CERT not in path.read_bytes()[:65536]:
            problems.add(field, f"{cert} is not a PEM certificate (no '-----BEGIN "
                         "CERTIFICATE-----')", "convert it with `openssl x509 -outform PEM`")
        elif not path.name.endswith(".crt"):
            problems.add(field, f"{cert}: name it *.crt", "update-ca-certificates only reads "
                         "those")


# Control-machine paths of PEM certificates named *.crt (update-ca-certificates and the
# proxy read only those).
PemFiles = Annotated[list[str] | None, checked(_pem_files),
                     Describe("a list of certificate file paths",
                              "give the paths of PEM certificates on the control machine")]


def private_file(problems: Problems, field: str, value) -> bool:
    """True when `value` names a control-machine file only its owner may read."""
    import stat

    if not isinstance(value, str) or not value:
        problems.add(field, f"{value!r} is not a path on the control machine")
        return False
    path = Path(value).expanduser()
    try:
        mode = path.stat().st_mode
    except OSError:
        problems.add(field, f"{path} cannot be read on the control machine", "fix the path")
        return False
    if mode & 0o077:
        problems.add(field, f"{path} is open to other users (mode {stat.S_IMODE(mode):04o})",
                     "it holds secrets: chmod 600 it")
        return False
    return True


def ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False
