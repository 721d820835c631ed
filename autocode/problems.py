"""Problems with settings and input, collected so that one run reports every one of them,
each naming the field, what is wrong and the fix.

One way for the whole project: the runtime's parsers (worker.yaml, traffic.yaml, the GPU
plan, the served ledger's prices) and the deploy's validation pass (infra/settings.py) add
to a `Problems` and use the checks below; each caller renders the lines in its own frame
(the deploy prefixes the host, the traffic config its file). A message never carries a
secret's value: checks of secret material name the field and the file, not the content.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    field: str
    problem: str  # what is wrong, e.g. "-1 is not a number of days"
    fix: str = ""  # how to put it right, e.g. "e.g. 7, or null to keep them"

    @property
    def text(self) -> str:
        return f"{self.problem}; {self.fix}" if self.fix else self.problem

    def __iter__(self):
        """Unpacks as (field, text), the pair a caller that renders it needs."""
        return iter((self.field, self.text))


class Problems:
    """Every problem found, in the order found. `prefix` is put before each field name
    (a section's checks add "ledger", the collector records "metering.ledger")."""

    def __init__(self, prefix: str = "", items: list[Problem] | None = None) -> None:
        self.prefix = prefix
        self.items: list[Problem] = [] if items is None else items

    def add(self, field: str, problem: str, fix: str = "") -> None:
        self.items.append(Problem(self.prefix + field, problem, fix))

    def append(self, pair: tuple[str, str]) -> None:
        """A (field, text) pair whose text is the whole message."""
        self.add(*pair)

    def within(self, prefix: str) -> Problems:
        """The same collection, adding under `prefix` (e.g. "metering.")."""
        return Problems(self.prefix + prefix, self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.items)

    def lines(self, frame: str = "") -> list[str]:
        """Each problem as `<frame><field>: <problem>; <fix>`."""
        return [f"{frame}{p.field}: {p.text}" for p in self.items]


# -- values -----------------------------------------------------------------------------------


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool: YAML's .nan compares false with everything, so a
    `<= 0` check alone would let it through."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def bounds(minimum: float | None, maximum: float | None, exclusive_minimum: bool = False
           ) -> str:
    """How a range reads in a message: "from 1 to 36500", "> 0", ">= 16"."""
    if minimum is not None and maximum is not None and not exclusive_minimum:
        return f"from {minimum:g} to {maximum:g}"
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if exclusive_minimum else '>='} {minimum:g}")
    if maximum is not None:
        parts.append(f"<= {maximum:g}")
    return " and ".join(parts)


def in_range(value: float, minimum: float | None, maximum: float | None,
             exclusive_minimum: bool = False) -> bool:
    if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
        return False
    return maximum is None or value <= maximum


# -- checks: each adds at most one problem and returns whether the value passed ---------------


def number(problems: Problems, field: str, value: Any, minimum: float | None = None,
           maximum: float | None = None, *, exclusive_minimum: bool = False,
           what: str = "a number", fix: str = "") -> bool:
    """A finite int or float within the range."""
    if is_number(value) and in_range(value, minimum, maximum, exclusive_minimum):
        return True
    problems.add(field, f"{value!r} is not {what} "
                 f"{bounds(minimum, maximum, exclusive_minimum)}".rstrip(), fix)
    return False


def close_names(name: str, known: Iterable[str]) -> list[str]:
    """Known names a misspelt one probably meant: those sharing its first word, else the
    nearest by spelling."""
    known = sorted(set(known))
    head = name.split("_")[0]
    same_head = [k for k in known if k.split("_")[0] == head]
    return same_head or difflib.get_close_matches(name, known, n=3, cutoff=0.75)


def unknown_names(problems: Problems, names: Iterable[str], known: Iterable[str],
                  problem: str, fix: str) -> list[str]:
    """A problem for each name not in `known`, with the likely names: `problem` is what an
    unknown one is ("no component has this setting"), `fix` what to do."""
    known = set(known)
    unknown = sorted(str(n) for n in names if n not in known)
    for name in unknown:
        close = close_names(name, known)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        problems.add(name, problem, hint + fix)
    return unknown


def string_list(problems: Problems, field: str, value: Any, example: str) -> list[str]:
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return value
    problems.add(field, f"{value!r} must be a list of non-empty strings", f"e.g. {example}")
    return []


def ipv4_networks(problems: Problems, field: str, value: Any, empty_means: str) -> bool:
    """A list of IPv4 networks (address/prefix); `empty_means` ends the message for a value
    that is no list, saying what leaving it empty or unset does."""
    if not isinstance(value, list):
        problems.add(field, f"{value!r} is not a list of IPv4 networks, e.g. [192.0.2.0/24]",
                     empty_means)
        return False
    ok = True
    for net in value:
        try:
            good = ipaddress.ip_network(str(net)).version == 4
        except ValueError:
            good = False
        if not good:
            problems.add(field, f"{net!r} is not an IPv4 network",
                         "write it as address/prefix, e.g. 192.0.2.0/24")
            ok = False
    return ok


def network(problems: Problems, field: str, value: Any) -> bool:
    try:
        ipaddress.ip_network(str(value))
        return True
    except ValueError:
        problems.add(field, f"{value!r} is not a network",
                     "write it as an address/prefix, e.g. 10.0.1.0/24")
        return False


_CALENDAR = re.compile(r"[A-Za-z0-9*:/ ,.~-]+")


def calendar(problems: Problems, field: str, value: Any, example: str) -> bool:
    """A systemd OnCalendar expression for a timer (plain characters only: it goes into a
    unit file)."""
    if isinstance(value, str) and _CALENDAR.fullmatch(value):
        return True
    problems.add(field, f"{value!r} is not a systemd OnCalendar expression, e.g. {example}")
    return False
