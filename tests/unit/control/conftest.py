"""A real autocode-control process on loopback, with real TLS: the operators' listener on
127.0.0.1, the workers' with client certificates of a test CA. The workers' inventory
addresses are 127.0.0.2-4 (all of 127/8 is loopback), so a test speaks as a worker by
connecting from its address."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from autocode.control.client import OperatorClient, WorkerClient
from testing.tls import make_mtls_files

TOKEN = "operator-token-for-tests-0123456789"
WORKERS = {"worker1": ("127.0.0.2", "claude-code", "10"),
           "worker2": ("127.0.0.3", "claude-code", "10"),
           "worker3": ("127.0.0.4", "aider", "3")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Control:
    config_path: Path
    data_root: Path
    tls: dict
    stranger: dict
    operator_url: str
    worker_url: str
    process: subprocess.Popen | None = None

    def start(self) -> Control:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "autocode.control.server", "serve", "--config",
             str(self.config_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        port = int(self.worker_url.rsplit(":", 1)[1])
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"autocode-control exited: {self.process.stdout.read()!r}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("autocode-control did not listen within 30 s")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def operator(self, token: str = TOKEN, source: str | None = None) -> OperatorClient:
        return OperatorClient(self.operator_url, self.tls["ca"], source_address=source,
                              token=token)

    def worker(self, name: str, source: str | None = None, tls: dict | None = None
               ) -> WorkerClient:
        cert, key = (tls or self.tls)["clients"][name]
        return WorkerClient(self.worker_url, self.tls["ca"], cert=cert, key=key,
                            source_address=source or WORKERS[name][0])

    def repo(self, name: str) -> Path:
        path = self.data_root / "control" / "repos" / f"{name}.git"
        subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True)
        return path


def write_config(tmp_path: Path, **overrides) -> Control:
    tls = make_mtls_files(tmp_path / "tls", "platform", tuple(WORKERS))
    stranger = make_mtls_files(tmp_path / "stranger", "stranger", tuple(WORKERS))
    token_hash = tmp_path / "operator-token.sha256"
    token_hash.write_text(hashlib.sha256(TOKEN.encode()).hexdigest() + "\n")
    operator_port, worker_port = free_port(), free_port()
    config = {
        "data_root": str(tmp_path / "data"),
        "operator_address": "127.0.0.1", "operator_port": operator_port,
        "worker_address": "127.0.0.1", "worker_port": worker_port,
        "tls_cert": str(tls["cert"]), "tls_key": str(tls["key"]), "ca_cert": str(tls["ca"]),
        "operator_token_sha256_file": str(token_hash),
        "management_networks": ["127.0.0.1/32"],
        "workers": {name: {"address": a, "agent_type": t, "daily_budget_usd": b}
                    for name, (a, t, b) in WORKERS.items()},
        "default_budget_usd": "2", "lease_s": 5, "claim_wait_s": 5,
        "max_body_bytes": 65536,
        **overrides,
    }
    path = tmp_path / "control.yaml"
    path.write_text(yaml.safe_dump(config))
    os.chmod(path, 0o600)
    return Control(path, tmp_path / "data", tls, stranger,
                   f"https://127.0.0.1:{operator_port}", f"https://127.0.0.1:{worker_port}")


@pytest.fixture
def control(tmp_path):
    service = write_config(tmp_path).start()
    yield service
    service.kill()
