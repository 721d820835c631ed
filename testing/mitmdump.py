"""A real mitmdump process with the addon, a local upstream HTTP server, and a client.

Everything listens on and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import http.client
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from autocode.traffic.cli import addon_path

MITMDUMP = Path(sys.executable).with_name("mitmdump")
AUTOCODE_PROXY = Path(sys.executable).with_name("autocode-proxy")


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
def mitmdump(workdir: Path, config_path: Path | None, extra: tuple[str, ...] = (),
             as_script: bool = False) -> Iterator[tuple[int, Path]]:
    """Run the proxy in regular mode on 127.0.0.1: with a config, `autocode-proxy` (the
    addon built in, as deployed), or mitmdump with the addon as a script (`as_script`);
    without one, bare mitmdump.

    Yields (port, log path). Stops it with SIGINT so the addon flushes its writer.
    """
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"mitmdump-{port}.log"
    program = MITMDUMP if config_path is None or as_script else AUTOCODE_PROXY
    cmd = [str(program), "--listen-host", "127.0.0.1", "--listen-port", str(port),
           "--set", f"confdir={workdir / 'mitmproxy-conf'}", "--set", "flow_detail=0", *extra]
    if config_path is not None:
        cmd += ["-s", str(addon_path())] if as_script else []
        cmd += ["--set", f"autocode_traffic_config={config_path}"]
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


class EchoServer:
    """A TCP server on 127.0.0.1 that echoes what it receives, optionally inside TLS, and
    says what arrived: `arrivals` lists one {"bytes": n, "tls": bool} per connection."""

    def __init__(self, tls_context: ssl.SSLContext | None = None):
        self.tls_context = tls_context
        self.arrivals: list[dict] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> EchoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        entry = {"bytes": 0, "tls": self.tls_context is not None}
        self.arrivals.append(entry)
        conn.settimeout(5)
        try:
            if self.tls_context is not None:
                conn = self.tls_context.wrap_socket(conn, server_side=True)
            while data := conn.recv(65536):
                entry["bytes"] += len(data)
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()


def connect_tunnel(proxy_port: int, host: str, port: int, timeout: float = 10
                   ) -> socket.socket:
    """A CONNECT tunnel through the proxy to host:port, as any proxy client opens one for
    something that is not plain HTTP."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
    sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"proxy closed the CONNECT: {head!r}")
        head += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"proxy refused the CONNECT: {head.splitlines()[0]!r}")
    return sock


def exchange(sock: socket.socket, payload: bytes, timeout: float = 3) -> bytes:
    """Send `payload` and read the answer until as many bytes came back, the peer closed,
    or it stayed silent for `timeout`; b"" when the connection was closed unanswered."""
    got = b""
    try:
        sock.settimeout(timeout)
        sock.sendall(payload)
        while len(got) < len(payload) and (chunk := sock.recv(65536)):
            got += chunk
    except OSError:
        pass
    finally:
        sock.close()
    return got


class WebSocketEchoServer(EchoServer):
    """A WebSocket server on 127.0.0.1 (plain ws://, wsproto) that echoes text messages;
    `arrivals` lists one {"messages": n, "bytes": n} per connection."""

    def _echo(self, conn: socket.socket) -> None:
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

        entry = {"messages": 0, "bytes": 0}
        self.arrivals.append(entry)
        ws = WSConnection(ConnectionType.SERVER)
        conn.settimeout(5)
        try:
            while data := conn.recv(65536):
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, Request):
                        conn.sendall(ws.send(AcceptConnection()))
                    elif isinstance(event, TextMessage):
                        entry["messages"] += 1
                        entry["bytes"] += len(event.data)
                        conn.sendall(ws.send(TextMessage(data=event.data)))
                    elif isinstance(event, CloseConnection):
                        conn.sendall(ws.send(event.response()))
                        return
        except OSError:
            pass
        finally:
            conn.close()


def websocket_echo(sock: socket.socket, host: str, messages: list[str]) -> list[str] | int:
    """A WebSocket client over `sock` (a tunnel): the echoed messages, or the HTTP status
    the upgrade was refused with."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import (
        AcceptConnection,
        CloseConnection,
        RejectConnection,
        Request,
        TextMessage,
    )

    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(ws.send(Request(host=host, target="/echo")))
    echoed: list[str] = []
    pending = list(messages)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return echoed
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, RejectConnection):
                    return event.status_code
                if isinstance(event, AcceptConnection) or isinstance(event, TextMessage):
                    if isinstance(event, TextMessage):
                        echoed.append(event.data)
                    if pending:
                        sock.sendall(ws.send(TextMessage(data=pending.pop(0))))
                    else:
                        sock.sendall(ws.send(CloseConnection(code=1000)))
                elif isinstance(event, CloseConnection):
                    return echoed
    finally:
        sock.close()
