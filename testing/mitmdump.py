"""A real mitmdump process with the addon, a local upstream HTTP server, and a client.

Everything listens on and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import http.client
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from autocode.traffic.cli import addon_path

MITMDUMP = Path(sys.executable).with_name("mitmdump")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _UpstreamHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        kind, _, number = path.strip("/").partition("/")
        status, size = 200, 2
        if kind == "status":
            status = int(number)
        elif kind == "bytes":
            size = int(number)
        body = b"x" * size
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Set-Cookie", "upstream_session=upstreamsecret; Path=/")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _answer


@contextlib.contextmanager
def upstream_server() -> Iterator[int]:
    """/bytes/N answers N bytes, /status/N answers status N; yields the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _UpstreamHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def wait_for_port(port: int, proc: subprocess.Popen, log_path: Path, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mitmdump exited {proc.returncode}:\n{log_path.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"mitmdump did not listen within {limit}s:\n{log_path.read_text()}")


@contextlib.contextmanager
def mitmdump(workdir: Path, config_path: Path | None, extra: tuple[str, ...] = ()
             ) -> Iterator[tuple[int, Path]]:
    """Run mitmdump in regular proxy mode on 127.0.0.1, with the addon when a config is given.

    Yields (port, log path). Stops it with SIGINT so the addon flushes its writer.
    """
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"mitmdump-{port}.log"
    cmd = [str(MITMDUMP), "--listen-host", "127.0.0.1", "--listen-port", str(port),
           "--set", f"confdir={workdir / 'mitmproxy-conf'}", "--set", "flow_detail=0", *extra]
    if config_path is not None:
        cmd += ["-s", str(addon_path()), "--set", f"autocode_traffic_config={config_path}"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc, log_path)
        yield port, log_path
    finally:
        stop(proc, signal.SIGINT, grace=15)


def stop(proc: subprocess.Popen, sig: int, grace: float) -> None:
    """Ask a process to stop with `sig`; kill it if it has not within `grace` seconds."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def proxied(proxy_port: int, method: str, url: str, body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, bytes]:
    """One request through the proxy (absolute-form, like any HTTP proxy client)."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=10)
    try:
        conn.request(method, url, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()
