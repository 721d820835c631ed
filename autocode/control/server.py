"""autocode-control: the task service on the orchestrator.

    autocode-control serve --config /etc/autocode/control.yaml
    autocode-control check --config /etc/autocode/control.yaml
    autocode-control hash-token < TOKEN     (prints the SHA-256 the config's file holds)

Two uvicorn servers in one process and one event loop, over one task store: the operators'
listener (TLS; the token) and the workers' (mutual TLS; the client certificate is checked by
the TLS layer against the platform CA, and its name against the source address by the app).

Exit status: 0 stopped cleanly; 2 bad configuration or arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
import signal
import ssl
import sys
import threading
from pathlib import Path

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from autocode.control.api import BodyLimit, operator_app, worker_app
from autocode.control.config import (
    DEFAULT_CONFIG_PATH,
    ControlConfig,
    ControlConfigError,
    load_config,
)
from autocode.control.running import write_running
from autocode.control.store import TaskStore

SHA256_HEX = re.compile(r"^[0-9a-f]{64}\Z")


class PeerCertProtocol(H11Protocol):
    """uvicorn's h11 protocol, handing the app the client's verified certificate in the ASGI
    TLS extension's place (scope["extensions"]["tls"]["client_cert"], as ssl.getpeercert()
    gives it): uvicorn itself passes no TLS details on."""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        cert = transport.get_extra_info("peercert")
        inner = self.app

        async def with_cert(scope, receive, send):
            scope.setdefault("extensions", {})["tls"] = {"client_cert": cert}
            await inner(scope, receive, send)

        self.app = with_cert


def read_token_hash(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ControlConfigError([f"operator_token_sha256_file: cannot read {path} "
                                  f"({exc.strerror}); the deploy writes it"]) from None
    if not SHA256_HEX.match(text):
        raise ControlConfigError([f"operator_token_sha256_file: {path} holds no SHA-256 in hex; "
                                  "autocode-control hash-token makes one"])
    return text


def _servers(config: ControlConfig, store: TaskStore, token_sha256: str) -> list[uvicorn.Server]:
    common = {"ssl_certfile": str(config.tls_cert), "ssl_keyfile": str(config.tls_key),
              "ssl_ca_certs": str(config.ca_cert), "http": PeerCertProtocol,
              "log_level": "warning", "access_log": False, "lifespan": "off",
              "timeout_graceful_shutdown": 5, "server_header": False,
              # The peer's address is who it is (a worker's identity, the management
              # networks): never what an X-Forwarded-For header says.
              "proxy_headers": False, "forwarded_allow_ips": ""}
    operators = uvicorn.Config(
        BodyLimit(operator_app(config, store, token_sha256), config.max_body_bytes),
        host=config.operator_address, port=config.operator_port, **common)
    workers = uvicorn.Config(
        BodyLimit(worker_app(config, store), config.max_body_bytes,
                  larger={"/v1/worker/git/": config.max_push_bytes}),
        host=config.worker_address, port=config.worker_port, ssl_cert_reqs=ssl.CERT_REQUIRED,
        **common)
    return [uvicorn.Server(operators), uvicorn.Server(workers)]


async def _serve_all(servers: list[uvicorn.Server]) -> None:
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    for server in servers:  # uvicorn's own handlers would only stop the server that set them
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    await asyncio.gather(*(server.serve() for server in servers))


def _expire_leases_forever(store: TaskStore, stop: threading.Event) -> None:
    # Claims expire leases too; this catches one that runs out while nobody claims.
    while not stop.wait(max(1.0, store.lease_s / 4)):
        for task_id in store.expire_leases():
            print(f"autocode-control: task {task_id} interrupted: its lease ran out",
                  file=sys.stderr)


def serve(config: ControlConfig) -> int:
    token_sha256 = read_token_hash(config.operator_token_sha256_file)
    config.database.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    config.repos_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = TaskStore(config.database, lease_s=config.lease_s,
                      on_change=lambda held: write_running(config.running_file, held))
    extended = store.extend_leases()
    if extended:
        print(f"autocode-control: {extended} task(s) held by workers at start; their leases "
              "start again", file=sys.stderr)
    stop = threading.Event()
    expiry = threading.Thread(target=_expire_leases_forever, args=(store, stop), daemon=True)
    expiry.start()
    try:
        asyncio.run(_serve_all(_servers(config, store, token_sha256)))
    finally:
        stop.set()
        store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autocode-control",
                                     description="The orchestrator's task service.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (("serve", "run the service"),
                       ("check", "validate the config; bind nothing")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    commands.add_parser("hash-token", help="the SHA-256 of the token on standard input")
    args = parser.parse_args(argv)
    if args.command == "hash-token":
        print(hashlib.sha256(sys.stdin.read().strip().encode()).hexdigest())
        return 0
    try:
        config = load_config(args.config)
        read_token_hash(config.operator_token_sha256_file)
        if args.command == "check":
            print(f"ok: {len(config.workers)} worker(s), operators on "
                  f"{config.operator_address}:{config.operator_port}, workers on "
                  f"{config.worker_address}:{config.worker_port}")
            return 0
        return serve(config)
    except ControlConfigError as exc:
        for line in exc.problems:
            print(f"autocode-control: {args.config}: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
