"""The base component's settings: the layout on every host, the platform's own account,
the base packages and the extra CA certificates every host trusts."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field

from infra.settings import Describe, PemFiles, Settings, abs_path, refuse_unless

ACCOUNT = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# Where the extra CA certificates are installed on every host.
CA_DIR = "/usr/local/share/ca-certificates/autocode"

AccountName = Annotated[str, refuse_unless(
    lambda v: bool(ACCOUNT.fullmatch(v)),
    lambda v: f"{v!r} is not a valid account name; use lowercase letters, digits, '-' and "
              "'_', e.g. autocode"), Describe("a valid account name", "e.g. autocode")]


class Base(Settings):
    data_root: abs_path("/mnt/data/autocode") = "/mnt/data/autocode"
    """The platform's data on every host (the seed's directory structure)."""
    install_dir: abs_path("/opt/autocode") = "/opt/autocode"
    """Where the runtime, the CLIs and other installs live."""
    config_dir: abs_path("/etc/autocode") = "/etc/autocode"
    """Every service's own configuration."""
    service_user: AccountName = "autocode"
    """The platform's own account: runs the worker agent and the model server."""
    service_home: abs_path("/var/lib/autocode") = "/var/lib/autocode"
    """That account's home, where agents keep their state."""
    extra_ca_certs: PemFiles = []
    """Control-machine paths of CA certificates every host must trust (e.g. an
    intercepting egress proxy's), installed under /usr/local/share/ca-certificates."""
    base_packages: list[str] = ["ca-certificates", "curl", "gnupg", "python3-venv",
                                "iptables", "acl"]
    """Debian packages every host gets."""
    apt_cache_seconds: Annotated[int | float, Field(ge=0),
                                 Describe("a number of seconds", "e.g. 3600")] = 3600
    """How old apt's package lists may be before an install updates them."""

    @property
    def runtime_venv(self) -> str:
        """The autocode runtime's virtualenv (the runtime component installs it)."""
        return f"{self.install_dir}/venv"

    @property
    def worker_config(self) -> str:
        """worker.yaml, the worker runtime's configuration (the worker component's)."""
        return f"{self.config_dir}/worker.yaml"
