"""A listener run on a lab host by the tests (standard library only): answers on the TCP
and UDP ports given and logs every connection or datagram, with the peer, as JSON lines.

    python3 listener.py LOGFILE --tcp 80,443,8080 --udp 9999
    python3 listener.py LOGFILE --bind ADDR --echo 443 --cert C --key K --websocket 80

--tcp answers "<hostname>-listener" so a probe can tell who it reached. --echo echoes
what arrives, inside TLS when the client starts a TLS handshake (with --cert/--key), raw
otherwise, and logs how many bytes. --websocket accepts a WebSocket upgrade and echoes
text messages, logging their count and bytes. It stops by itself after an hour at most.
"""

import argparse
import base64
import functools
import hashlib
import json
import socket
import ssl
import struct
import threading
import time

NAME = socket.gethostname()


def log(path, entry):
    with open(path, "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def serve_tcp(path, port, bind="0.0.0.0"):
    server = socket.create_server((bind, port))
    while True:
        conn, peer = server.accept()
        log(path, {"proto": "tcp", "port": port, "peer": peer[0]})
        try:
            conn.sendall(f"{NAME}-listener\n".encode())  # a banner: who was reached
        except OSError:
            pass
        conn.close()


def serve_udp(path, port, bind="0.0.0.0"):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((bind, port))
    while True:
        data, peer = sock.recvfrom(4096)
        log(path, {"proto": "udp", "port": port, "peer": peer[0], "bytes": len(data)})
        sock.sendto(f"{NAME}-listener".encode(), peer)


def accept_forever(bind, port, handle):
    server = socket.create_server((bind, port))
    while True:
        conn, peer = server.accept()
        threading.Thread(target=handle, args=(conn, peer[0]), daemon=True).start()


def echo_connection(path, port, tls_context, conn, peer):
    conn.settimeout(10)
    proto = "raw"
    total = 0
    try:
        first = conn.recv(1, socket.MSG_PEEK)
        if first == b"\x16" and tls_context is not None:  # a TLS handshake record
            conn = tls_context.wrap_socket(conn, server_side=True)
            proto = "tls"
        while data := conn.recv(65536):
            total += len(data)
            conn.sendall(data)
    except (OSError, ssl.SSLError) as exc:
        log(path, {"proto": proto, "port": port, "peer": peer, "bytes": total,
                   "error": str(exc)})
        conn.close()
        return
    log(path, {"proto": proto, "port": port, "peer": peer, "bytes": total})
    conn.close()


WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def read_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed mid-frame")
        data += chunk
    return data


def ws_frame(opcode, payload):
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def websocket_connection(path, port, conn, peer):
    """RFC 6455, just enough: the upgrade, masked client frames, text echo, close."""
    conn.settimeout(10)
    messages = total = 0
    try:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(4096)
            if not chunk:
                return
            request += chunk
        headers = {}
        for line in request.split(b"\r\n")[1:]:
            if b":" in line:
                name, value = line.split(b":", 1)
                headers[name.strip().lower().decode()] = value.strip().decode()
        accept = base64.b64encode(hashlib.sha1(
            (headers.get("sec-websocket-key", "") + WS_GUID).encode()).digest()).decode()
        conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                      ).encode())
        while True:
            b0, b1 = read_exact(conn, 2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", read_exact(conn, 2))[0]
            elif n == 127:
                n = struct.unpack("!Q", read_exact(conn, 8))[0]
            mask = read_exact(conn, 4) if b1 & 0x80 else b"\0\0\0\0"
            payload = bytes(c ^ mask[i % 4] for i, c in enumerate(read_exact(conn, n)))
            if opcode == 0x8:
                conn.sendall(ws_frame(0x8, payload[:2]))
                break
            if opcode == 0x1:
                messages += 1
                total += len(payload)
                conn.sendall(ws_frame(0x1, payload))
    except OSError:
        pass
    finally:
        log(path, {"proto": "websocket", "port": port, "peer": peer, "messages": messages,
                   "bytes": total})
        conn.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("log")
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--tcp", default="")
    parser.add_argument("--udp", default="")
    parser.add_argument("--echo", type=int, default=0)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--websocket", type=int, default=0)
    args = parser.parse_args()
    for ports, target in ((args.tcp, serve_tcp), (args.udp, serve_udp)):
        for port in filter(None, ports.split(",")):
            threading.Thread(target=target, args=(args.log, int(port), args.bind),
                             daemon=True).start()
    if args.echo:
        context = None
        if args.cert:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(args.cert, args.key)
        handler = functools.partial(echo_connection, args.log, args.echo, context)
        threading.Thread(target=accept_forever, args=(args.bind, args.echo, handler),
                         daemon=True).start()
    if args.websocket:
        handler = functools.partial(websocket_connection, args.log, args.websocket)
        threading.Thread(target=accept_forever, args=(args.bind, args.websocket, handler),
                         daemon=True).start()
    time.sleep(3600)


if __name__ == "__main__":
    main()
