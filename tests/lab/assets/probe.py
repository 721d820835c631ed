"""Connectivity probe run on lab hosts by the tests (standard library only).

    python3 probe.py tcp HOST PORT | udp HOST PORT | dns SERVER NAME | http URL [HEADER: V]

Prints one JSON line: {"ok": bool, "detail": str}. Every attempt is bounded by a timeout.
"""

import json
import socket
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


def main():
    kind, *args = sys.argv[1:]
    try:
        detail = {"tcp": tcp, "udp": udp, "dns": dns, "http": http}[kind](*args)
        print(json.dumps({"ok": True, "detail": detail}))
    except Exception as exc:  # the failure is the answer
        print(json.dumps({"ok": False, "detail": f"{type(exc).__name__}: {exc}"}))


if __name__ == "__main__":
    main()
