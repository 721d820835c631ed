"""Checks of each host's merged data (group defaults + inventory overrides).

One error style for the whole deploy: every problem is collected (never only the first),
and each names the host, the field and the fix. The checks run before any host is
contacted; a component adds its own through `Component.check` (infra/component.py), using
the small helpers here.
"""

from __future__ import annotations

import ipaddress
import math
import re
import stat
from pathlib import Path
from typing import Any

HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")  # \Z: `$` admits a final \n
PORT_FIELDS_SUFFIX = "_port"
PEM_CERT = b"-----BEGIN CERTIFICATE-----"
# Paths on the hosts go into commands and unit files: plain characters only.
SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/@+-]*\Z")


class Problems:
    """Problems with one host's data, each a complete sentence with the fix."""

    def __init__(self, role: str, name: str):
        self.role = role
        self.name = name
        self.items: list[str] = []

    def add(self, field: str, message: str) -> None:
        self.items.append(f"{self.role} {self.name!r}: {field}: {message}")

    def __bool__(self) -> bool:
        return bool(self.items)


def is_number(value: Any) -> bool:
    """A finite int or float: YAML's .nan compares false with everything, so a `<= 0`
    check alone would let it through."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def is_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def check_abs_path(problems: Problems, field: str, value: Any, example: str) -> None:
    """An absolute path on the hosts, other than /, with no characters a shell or a unit
    file would read specially."""
    if not (isinstance(value, str) and SAFE_PATH.match(value) and value.rstrip("/")):
        problems.add(field, f"{value!r} must be an absolute path other than /, of letters, "
                     f"digits and . _ / @ + -, e.g. {example}")


def check_name(problems: Problems, field: str, value: Any, example: str) -> None:
    if not (isinstance(value, str) and re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value)):
        problems.add(field, f"{value!r} is not a valid account name; use lowercase letters, "
                     f"digits, '-' and '_', e.g. {example}")


def check_bool(problems: Problems, field: str, value: Any) -> None:
    if not isinstance(value, bool):
        problems.add(field, f"{value!r} is not true or false; write true or false unquoted")


def check_string_list(problems: Problems, field: str, value: Any, example: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        problems.add(field, f"{value!r} must be a list of non-empty strings, e.g. {example}")
        return []
    return value


def check_pem_files(problems: Problems, field: str, value: Any) -> None:
    """Control-machine paths of PEM certificates named *.crt (update-ca-certificates and
    the proxy read only those)."""
    if not isinstance(value, list):
        problems.add(field, "must be a list of certificate file paths")
        return
    for cert in value:
        path = Path(str(cert)).expanduser()
        if not path.is_file():
            problems.add(field, f"{cert} does not exist; give the path of a PEM "
                         "certificate on the control machine")
        elif PEM_CERT not in path.read_bytes()[:65536]:
            problems.add(field, f"{cert} is not a PEM certificate (no '-----BEGIN "
                         "CERTIFICATE-----'); convert it with `openssl x509 -outform PEM`")
        elif not path.name.endswith(".crt"):
            problems.add(field, f"{cert}: name it *.crt, as update-ca-certificates only "
                         "reads those")


def check_network(problems: Problems, field: str, value: Any, required: bool) -> None:
    if value is None:
        if required:
            problems.add(field, "missing; the firewall needs the workers' network: set it "
                         f"under data:, e.g. {field}: 10.0.1.0/24")
        return
    try:
        ipaddress.ip_network(str(value))
    except ValueError:
        problems.add(field, f"{value!r} is not a network; write it as an address/prefix, "
                     "e.g. 10.0.1.0/24")


def check_connection(problems: Problems, data: dict[str, Any]) -> None:
    """What every host needs before a connection: a valid name, SSH settings, ports."""
    if not HOSTNAME.match(problems.name):
        problems.add("name", f"{problems.name!r} is not a valid host name; use lowercase "
                     "letters, digits and dashes, e.g. worker1")
    for field, value in sorted(data.items()):
        if field.endswith(PORT_FIELDS_SUFFIX) and not field.startswith("ssh_"):
            if not is_port(value):
                problems.add(field, f"{value!r} is not a port; use a whole number from 1 to "
                             "65535")
    ssh_port = data.get("ssh_port", 22)
    if not is_port(ssh_port):
        problems.add("ssh.port", f"{ssh_port!r} is not a port; use a whole number from 1 to "
                     "65535")
    key = data.get("ssh_key")
    if key is not None and not Path(str(key)).expanduser().is_file():
        problems.add("ssh.key", f"SSH key file {key} does not exist; create it (ssh-keygen "
                     f"-t ed25519 -f {key}) or point ssh.key at your private key")
    known = data.get("ssh_known_hosts_file")
    if known is not None and not Path(str(known)).expanduser().is_file():
        problems.add("ssh.known_hosts", f"known_hosts file {known} does not exist; create "
                     "it with ssh-keyscan from a trusted network, or drop the field")


def check_private_file(problems: Problems, field: str, value: Any) -> bool:
    """True when `value` names a control-machine file only its owner may read."""
    if not isinstance(value, str) or not value:
        problems.add(field, f"{value!r} is not a path on the control machine")
        return False
    path = Path(value).expanduser()
    try:
        mode = path.stat().st_mode
    except OSError:
        problems.add(field, f"{path} cannot be read on the control machine; fix the path")
        return False
    if mode & 0o077:
        problems.add(field, f"{path} is open to other users (mode {stat.S_IMODE(mode):04o}); it "
                     "holds secrets: chmod 600 it")
        return False
    return True


_CALENDAR = re.compile(r"[A-Za-z0-9*:/ ,.~-]+")


def check_calendar(problems: Problems, field: str, value: Any, example: str) -> None:
    """A systemd OnCalendar expression for a timer (plain characters only: it goes into a
    unit file)."""
    if not (isinstance(value, str) and _CALENDAR.fullmatch(value)):
        problems.add(field, f"{value!r} is not a systemd OnCalendar expression, e.g. {example}")


def check_ipv4_networks(problems: Problems, field: str, value: Any, empty_means: str) -> None:
    """A list of IPv4 networks (address/prefix); `empty_means` ends the message for a
    value that is no list, saying what leaving it empty or unset does."""
    if not isinstance(value, list):
        problems.add(field, f"{value!r} is not a list of IPv4 networks, e.g. [192.0.2.0/24]; "
                     f"{empty_means}")
        return
    for net in value:
        try:
            ok = ipaddress.ip_network(str(net)).version == 4
        except ValueError:
            ok = False
        if not ok:
            problems.add(field, f"{net!r} is not an IPv4 network; write it as address/prefix, "
                         "e.g. 192.0.2.0/24")
