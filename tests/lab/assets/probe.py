"""Connectivity probe run on lab hosts by the tests (standard library only).

    python3 probe.py tcp HOST PORT | udp HOST PORT | dns SERVER NAME | http URL [HEADER: V]
    python3 probe.py raw HOST PORT | tlsraw HOST PORT SNI | ws HOST PORT

Prints one JSON line: {"ok": bool, "detail": str}. Every attempt is bounded by a timeout.
"""

import base64
import json
import os
import socket
import ssl
import struct
import sys
import urllib.request

TIMEOUT = 3.0


def tcp(host, port):
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as s:
        s.settimeout(1.0)  # connected is the answer; a banner, if any, is a bonus
        try:
            return s.recv(64).decode(errors="replace").strip() or "connected"
        except TimeoutError:
            return "connected"


def udp(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.sendto(b"probe", (host, int(port)))
        return s.recvfrom(512)[0].decode(errors="replace")


def dns(server, name):
    query = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.sendto(query, (server, 53))
        reply = s.recvfrom(512)[0]
    answers = struct.unpack(">H", reply[6:8])[0]
    if not answers:
        raise OSError("no answer records")
    return socket.inet_ntoa(reply[-4:])


def http(url, *headers):
    req = urllib.request.Request(url)
    for header in headers:
        key, value = header.split(":", 1)
        req.add_header(key.strip(), value.strip())
    with urllib.request.urlopen(req, timeout=TIMEOUT * 3) as resp:
        return f"{resp.status} {resp.read().decode(errors='replace')}"


PAYLOAD = b"\x00\x01 neither HTTP nor TLS \xff\n" * 8


def _echoed(sock, expect):
    """What came back for `expect` bytes sent; raises when the connection was closed or
    silent without an answer."""
    sock.settimeout(TIMEOUT)
    sock.sendall(expect)
    got = b""
    while len(got) < len(expect):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    if not got:
        raise ConnectionError("closed without an answer")
    return f"echoed {len(got)} of {len(expect)} bytes" + ("" if got == expect else " (DIFFERENT)")


def raw(host, port):
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as s:
        return _echoed(s, PAYLOAD)


def tlsraw(host, port, sni):
    context = ssl.create_default_context()  # the system store: it has the proxy CA
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as s:
        with context.wrap_socket(s, server_hostname=sni) as t:
            return _echoed(t, PAYLOAD)


def ws(host, port):
    """A WebSocket client (RFC 6455, masked frames): three text messages echoed?"""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as s:
        s.settimeout(TIMEOUT)
        s.sendall((f"GET /echo HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed during the upgrade: {head[:80]!r}")
            head += chunk
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if " 101 " not in status + " ":
            raise ConnectionError(f"upgrade refused: {status}")
        echoed = 0
        for text in ("one", "two", "three"):
            payload, mask = text.encode(), os.urandom(4)
            s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask +
                      bytes(c ^ mask[i % 4] for i, c in enumerate(payload)))
            frame = s.recv(2 + len(payload))
            echoed += frame[2:] == payload
        s.sendall(bytes([0x88, 0x80]) + os.urandom(4))
        return f"websocket: {echoed} of 3 messages echoed"


def main():
    kind, *args = sys.argv[1:]
    try:
        detail = {"tcp": tcp, "udp": udp, "dns": dns, "http": http, "raw": raw,
                  "tlsraw": tlsraw, "ws": ws}[kind](*args)
        print(json.dumps({"ok": True, "detail": detail}))
    except Exception as exc:  # the failure is the answer
        print(json.dumps({"ok": False, "detail": f"{type(exc).__name__}: {exc}"}))


if __name__ == "__main__":
    main()
