"""A listener run on a lab host by the tests (standard library only): answers on the TCP
and UDP ports given and logs every connection or datagram, with the peer, as JSON lines.

    python3 listener.py LOGFILE --tcp 80,443,8080 --udp 9999

It answers "<hostname>-listener" so a probe can tell who it reached. It stops by itself
after an hour at most.
"""

import argparse
import json
import socket
import threading
import time

NAME = socket.gethostname()


def log(path, entry):
    with open(path, "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def serve_tcp(path, port):
    server = socket.create_server(("0.0.0.0", port))
    while True:
        conn, peer = server.accept()
        log(path, {"proto": "tcp", "port": port, "peer": peer[0]})
        try:
            conn.sendall(f"{NAME}-listener\n".encode())  # a banner: who was reached
        except OSError:
            pass
        conn.close()


def serve_udp(path, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    while True:
        data, peer = sock.recvfrom(4096)
        log(path, {"proto": "udp", "port": port, "peer": peer[0], "bytes": len(data)})
        sock.sendto(f"{NAME}-listener".encode(), peer)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("log")
    parser.add_argument("--tcp", default="")
    parser.add_argument("--udp", default="")
    args = parser.parse_args()
    for ports, target in ((args.tcp, serve_tcp), (args.udp, serve_udp)):
        for port in filter(None, ports.split(",")):
            threading.Thread(target=target, args=(args.log, int(port)), daemon=True).start()
    time.sleep(3600)


if __name__ == "__main__":
    main()
