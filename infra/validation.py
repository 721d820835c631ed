"""What every host needs before pyinfra connects to it: a valid name and SSH settings.

Everything else a host's data holds is a component's setting, checked by its typed model
(infra/settings.py) in the same pass (infra/components.py `Catalogue.check_host`), every
problem reported at once with the host, the field and the fix (autocode/problems.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autocode.problems import Problems

HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")  # \Z: `$` admits a final \n


def is_port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def check_connection(problems: Problems, name: str, data: Mapping[str, Any]) -> None:
    """The host's name, and the SSH settings the inventory gave it."""
    if not HOSTNAME.match(name):
        problems.add("name", f"{name!r} is not a valid host name", "use lowercase letters, "
                     "digits and dashes, e.g. worker1")
    ssh_port = data.get("ssh_port", 22)
    if not is_port(ssh_port):
        problems.add("ssh.port", f"{ssh_port!r} is not a port", "use a whole number from 1 "
                     "to 65535")
    key = data.get("ssh_key")
    if key is not None and not Path(str(key)).expanduser().is_file():
        problems.add("ssh.key", f"SSH key file {key} does not exist", f"create it (ssh-keygen "
                     f"-t ed25519 -f {key}) or point ssh.key at your private key")
    known = data.get("ssh_known_hosts_file")
    if known is not None and not Path(str(known)).expanduser().is_file():
        problems.add("ssh.known_hosts", f"known_hosts file {known} does not exist", "create "
                     "it with ssh-keyscan from a trusted network, or drop the field")
