"""The lab's "internet" fixture servers and their test TLS material, on 127.0.0.1 only."""

from __future__ import annotations

import http.client
import ipaddress
import json
import queue
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from lab.fixture_ca import ensure_fixture_tls

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "lab" / "fixtures" / "internet_server.py"
HOST = "127.0.0.1"
DNS_ANSWER = "10.237.0.100"
TIMEOUT = 5.0


def _free_port(*, tcp: bool = True, udp: bool = False) -> int:
    """A port free for TCP and/or UDP on 127.0.0.1 (there is a small race before it is used)."""
    for _ in range(50):
        first = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
        try:
            first.bind((HOST, 0))
            port = first.getsockname()[1]
            if tcp and udp:
                second = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    second.bind((HOST, port))
                except OSError:
                    continue
                finally:
                    second.close()
            return port
        finally:
            first.close()
    raise RuntimeError("no free port found")


class Running:
    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line.rstrip("\n"))
            self.lines.put(line.rstrip("\n"))

    def wait_ready(self) -> str:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read() if self.proc.stderr else ""
                    pytest.fail(f"internet_server exited {self.proc.returncode}: {err}")
                continue
            if line.startswith("ready "):
                return line
        pytest.fail("internet_server did not get ready within 10 s")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return ensure_fixture_tls(
        tmp_path_factory.mktemp("tls"), ips=[HOST, "10.237.0.2"], names=["internet.lab"]
    )


@pytest.fixture(scope="module")
def server(tls):
    ports = {
        "http": _free_port(),
        "https": _free_port(),
        "tcp": _free_port(),
        "udp": _free_port(tcp=False, udp=True),
        "dns": _free_port(tcp=True, udp=True),
    }
    running = Running(
        [
            "--bind", HOST,
            "--http-port", str(ports["http"]),
            "--https-port", str(ports["https"]),
            "--cert", str(tls.server_cert),
            "--key", str(tls.server_key),
            "--tcp-port", str(ports["tcp"]),
            "--udp-port", str(ports["udp"]),
            "--dns-port", str(ports["dns"]),
            "--dns-answer", DNS_ANSWER,
        ]
    )  # fmt: skip
    try:
        running.wait_ready()
        yield ports, running
    finally:
        running.stop()


def _get(conn: http.client.HTTPConnection, method: str, path: str, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    return resp, resp.read()


# --------------------------------------------------------------------------------------------
# HTTP / HTTPS


def test_http_get_echoes_request(server):
    ports, running = server
    conn = http.client.HTTPConnection(HOST, ports["http"], timeout=TIMEOUT)
    try:
        resp, body = _get(conn, "GET", "/some/path?q=1", headers={"X-Lab-Test": "hello"})
        assert resp.status == 200
        assert resp.getheader("Content-Type") == "application/json"
        echo = json.loads(body)
        assert echo["server"] == "internet"
        assert echo["method"] == "GET"
        assert echo["path"] == "/some/path?q=1"
        assert echo["headers"]["X-Lab-Test"] == "hello"
        assert echo["body_len"] == 0
        assert echo["client"] == HOST
        assert echo["tls"] is False

        # same connection (keep-alive), a POST with a body and an unusual method
        resp, body = _get(conn, "POST", "/upload", body=b"a" * 1234)
        assert resp.status == 200
        echo = json.loads(body)
        assert (echo["method"], echo["body_len"]) == ("POST", 1234)
        resp, body = _get(conn, "PURGE", "/cache")
        assert json.loads(body)["method"] == "PURGE"
    finally:
        conn.close()
    deadline = time.monotonic() + TIMEOUT
    while f"http GET /some/path?q=1 from {HOST}" not in running.log:
        assert time.monotonic() < deadline, running.log
        time.sleep(0.02)


def test_http_bytes_and_status(server):
    ports, _ = server
    conn = http.client.HTTPConnection(HOST, ports["http"], timeout=TIMEOUT)
    try:
        resp, body = _get(conn, "GET", "/bytes/1000")
        assert resp.status == 200
        assert body == b"x" * 1000
        resp, body = _get(conn, "GET", "/status/418")
        assert resp.status == 418
        assert json.loads(body)["path"] == "/status/418"
        resp, body = _get(conn, "GET", "/status/204")
        assert (resp.status, body) == (204, b"")
        resp, body = _get(conn, "GET", "/bytes/0")
        assert (resp.status, body) == (200, b"")
    finally:
        conn.close()


def test_https_verifies_against_test_ca_only(server, tls):
    ports, _ = server
    ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
    # as strict as Python 3.13 / OpenSSL 3 defaults
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    conn = http.client.HTTPSConnection(HOST, ports["https"], timeout=TIMEOUT, context=ctx)
    try:
        resp, body = _get(conn, "PUT", "/secure", body=b"0123456789", headers={"X-A": "b"})
        assert resp.status == 200
        echo = json.loads(body)
        assert echo["tls"] is True
        assert (echo["method"], echo["path"], echo["body_len"]) == ("PUT", "/secure", 10)
        assert echo["headers"]["X-A"] == "b"
        assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
        resp, body = _get(conn, "GET", "/bytes/70000")
        assert body == b"x" * 70000
    finally:
        conn.close()


def test_https_rejects_other_trust_and_old_tls(server, tls):
    ports, _ = server
    # a context that does not know the test CA must refuse the certificate
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with socket.create_connection((HOST, ports["https"]), timeout=TIMEOUT) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(raw, server_hostname=HOST)
    # the wrong name must not verify either
    ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
    with socket.create_connection((HOST, ports["https"]), timeout=TIMEOUT) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(raw, server_hostname="not-in-the-cert.example")
    # TLS 1.1 and older are refused (by the server: this client is willing to speak them)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with socket.create_connection((HOST, ports["https"]), timeout=TIMEOUT) as raw:
        with pytest.raises((ssl.SSLError, OSError)):
            ctx.wrap_socket(raw, server_hostname=HOST)


# --------------------------------------------------------------------------------------------
# raw TCP / UDP


def test_tcp_banner(server):
    ports, _ = server
    with socket.create_connection((HOST, ports["tcp"]), timeout=TIMEOUT) as s:
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data == b"internet-tcp-ok\n"


def test_udp_echo(server):
    ports, _ = server
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.sendto(b"ping 42", (HOST, ports["udp"]))
        data, addr = s.recvfrom(65535)
    assert data == b"internet-udp:ping 42"
    assert addr == (HOST, ports["udp"])


# --------------------------------------------------------------------------------------------
# DNS


def _dns_query(qid: int, name: str, qtype: int, rd: bool = True) -> bytes:
    header = struct.pack("!6H", qid, 0x0100 if rd else 0, 1, 0, 0, 0)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    return header + qname + struct.pack("!2H", qtype, 1)


def _dns_parse(reply: bytes, query: bytes) -> tuple[int, int, list[tuple[int, int, bytes]]]:
    """(id, flags, [(type, ttl, rdata)]) of a reply, checking the question came back as sent."""
    qid, flags, qd, an, ns, ar = struct.unpack("!6H", reply[:12])
    assert (qd, ns, ar) == (1, 0, 0)
    question = query[12:]
    assert reply[12 : 12 + len(question)] == question
    pos = 12 + len(question)
    answers = []
    for _ in range(an):
        assert reply[pos : pos + 2] == b"\xc0\x0c"  # points at the question's name
        rtype, rclass, ttl, rdlen = struct.unpack("!HHIH", reply[pos + 2 : pos + 12])
        assert rclass == 1
        answers.append((rtype, ttl, reply[pos + 12 : pos + 12 + rdlen]))
        pos += 12 + rdlen
    assert pos == len(reply)
    return qid, flags, answers


def _udp_dns(port: int, query: bytes, timeout: float = TIMEOUT) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(query, (HOST, port))
        return s.recvfrom(65535)[0]


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def test_dns_udp_a_and_aaaa(server):
    ports, _ = server
    query = _dns_query(0x1234, "example.com", 1)
    qid, flags, answers = _dns_parse(_udp_dns(ports["dns"], query), query)
    assert qid == 0x1234
    assert flags & 0x8000 and flags & 0x0080 and flags & 0x0100  # QR, RA, RD copied
    assert flags & 0x000F == 0  # NOERROR
    assert answers == [(1, 60, ipaddress.ip_address(DNS_ANSWER).packed)]

    query = _dns_query(0x4321, "pypi.org", 28, rd=False)
    qid, flags, answers = _dns_parse(_udp_dns(ports["dns"], query), query)
    assert qid == 0x4321
    assert flags & 0x8000 and not flags & 0x0100 and flags & 0x000F == 0
    assert answers == []


def test_dns_udp_ignores_malformed(server):
    ports, _ = server
    with pytest.raises(TimeoutError):
        _udp_dns(ports["dns"], b"\x00\x01garbage", timeout=0.3)
    with pytest.raises(TimeoutError):  # name runs past the end
        _udp_dns(ports["dns"], _dns_query(7, "example.com", 1)[:20], timeout=0.3)
    # and it still answers afterwards
    query = _dns_query(8, "still.alive", 1)
    assert _dns_parse(_udp_dns(ports["dns"], query), query)[0] == 8


def test_dns_tcp(server):
    ports, _ = server
    with socket.create_connection((HOST, ports["dns"]), timeout=TIMEOUT) as s:
        for qid, name, qtype in ((0x0A0B, "github.com", 1), (0x0C0D, "github.com", 28)):
            query = _dns_query(qid, name, qtype)
            s.sendall(struct.pack("!H", len(query)) + query)
            (length,) = struct.unpack("!H", _recv_exact(s, 2))
            got_id, flags, answers = _dns_parse(_recv_exact(s, length), query)
            assert got_id == qid and flags & 0x8000
            if qtype == 1:
                assert answers == [(1, 60, ipaddress.ip_address(DNS_ANSWER).packed)]
            else:
                assert answers == []
        # malformed → the server closes the connection
        s.sendall(struct.pack("!H", 5) + b"\x00\x01\x00\x00\x00")
        assert s.recv(10) == b""


# --------------------------------------------------------------------------------------------
# lifecycle


def test_sigterm_exits_zero_and_disabled_ports_stay_closed():
    port = _free_port()
    running = Running(["--bind", HOST, "--tcp-port", str(port), "--http-port", "0"])
    try:
        ready = running.wait_ready()
        assert ready == f"ready tcp={HOST}:{port}"
        running.proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        assert running.proc.wait(timeout=5) == 0
        assert time.monotonic() - start < 5
    finally:
        running.stop()


def test_refuses_to_start_without_ports():
    proc = subprocess.run(
        [sys.executable, str(SERVER), "--bind", HOST],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert proc.returncode != 0


# --------------------------------------------------------------------------------------------
# fixture_ca


def _snapshot(tls) -> dict[str, tuple[int, bytes]]:
    paths = (tls.ca_cert, tls.ca_key, tls.server_cert, tls.server_key)
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in paths}


def _san(path: Path) -> tuple[set, set]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        {str(ip) for ip in san.get_values_for_type(x509.IPAddress)},
        set(san.get_values_for_type(x509.DNSName)),
    )


def test_fixture_ca_files_and_extensions(tmp_path):
    tls = ensure_fixture_tls(tmp_path / "t", ips=["10.237.0.2", "fd37:ac::2"], names=["a.lab"])
    assert tls.ca_cert.name == "internet-ca.crt" and tls.ca_key.name == "internet-ca.key"
    assert tls.server_cert.name == "internet-server.crt"
    assert tls.server_key.name == "internet-server.key"
    for key in (tls.ca_key, tls.server_key):
        assert key.stat().st_mode & 0o777 == 0o600

    ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    cn = ca.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert cn == "autocode lab internet test CA"
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    days = (ca.not_valid_after_utc - ca.not_valid_before_utc).days
    assert 3649 <= days <= 3651

    srv = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
    srv.verify_directly_issued_by(ca)
    eku = srv.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = srv.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    srv.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert 700 <= (srv.not_valid_after_utc - srv.not_valid_before_utc).days <= 740
    assert _san(tls.server_cert) == ({"10.237.0.2", "fd37:ac::2"}, {"a.lab"})


def test_fixture_ca_is_idempotent_and_follows_sans(tmp_path):
    tls = ensure_fixture_tls(tmp_path, ips=["10.237.0.2"], names=["internet.lab", "x.lab"])
    before = _snapshot(tls)
    time.sleep(0.01)  # so that a rewrite would show in the mtimes
    again = ensure_fixture_tls(tmp_path, ips=["10.237.0.2"], names=["X.lab", "internet.lab"])
    assert again == tls
    assert _snapshot(tls) == before

    ensure_fixture_tls(tmp_path, ips=["10.237.0.2", "10.237.0.3"], names=["internet.lab"])
    after = _snapshot(tls)
    # the CA stays, the server certificate and key are new
    assert after["internet-ca.crt"] == before["internet-ca.crt"]
    assert after["internet-ca.key"] == before["internet-ca.key"]
    assert after["internet-server.crt"][1] != before["internet-server.crt"][1]
    assert after["internet-server.key"][1] != before["internet-server.key"][1]
    assert _san(tls.server_cert) == ({"10.237.0.2", "10.237.0.3"}, {"internet.lab"})
    assert tls.server_key.stat().st_mode & 0o777 == 0o600

    # a lost CA key means a new CA, and with it a new server certificate it signed
    tls.ca_key.unlink()
    ensure_fixture_tls(tmp_path, ips=["10.237.0.2", "10.237.0.3"], names=["internet.lab"])
    ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    x509.load_pem_x509_certificate(tls.server_cert.read_bytes()).verify_directly_issued_by(ca)
    assert tls.ca_cert.read_bytes() != after["internet-ca.crt"][1]


def test_fixture_ca_needs_a_san(tmp_path):
    with pytest.raises(ValueError):
        ensure_fixture_tls(tmp_path, ips=[], names=[])
    with pytest.raises(ValueError):
        ensure_fixture_tls(tmp_path, ips=["not-an-ip"], names=[])
