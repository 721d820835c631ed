"""Test TLS material for the lab's "internet" fixture: a private CA and a server certificate.

The files live in one directory and are created only when missing or no longer fitting:

- ``internet-ca.crt`` / ``internet-ca.key``: the test CA (10 years). The ``.crt`` name matters:
  Debian's ``update-ca-certificates`` only picks up ``*.crt`` files.
- ``internet-server.crt`` / ``internet-server.key``: the fixture's server certificate (about
  2 years), signed by that CA, with exactly the asked IP addresses and DNS names as SANs.

Both certificates carry subjectKeyIdentifier and authorityKeyIdentifier so that strict
verifiers (OpenSSL 3 with X509_STRICT, as Python 3.13 enables by default) accept them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "internet-ca.crt"
CA_KEY = "internet-ca.key"
SERVER_CERT = "internet-server.crt"
SERVER_KEY = "internet-server.key"

CA_COMMON_NAME = "autocode lab internet test CA"
CA_DAYS = 3650
SERVER_DAYS = 730
RENEW_BEFORE = dt.timedelta(days=30)  # replace a certificate this close to its expiry
BACKDATE = dt.timedelta(hours=1)  # tolerate clock skew between lab hosts

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class FixtureTls:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def ensure_fixture_tls(dir: Path, ips: list[str], names: list[str]) -> FixtureTls:  # noqa: A002
    """Creates the CA and server certificate in ``dir`` unless fitting ones are already there.

    The server certificate is replaced when its SANs differ from ``ips`` + ``names`` (order and
    DNS case do not matter), when it was not issued by the CA on disk, when it does not match
    its key, or when it is about to expire. Keys are written 0600.
    """
    dir = Path(dir)  # noqa: A001
    want_ips = _parse_ips(ips)
    want_names = _normalize_names(names)
    if not want_ips and not want_names:
        raise ValueError("the server certificate needs at least one IP address or DNS name")
    dir.mkdir(parents=True, exist_ok=True)
    tls = FixtureTls(
        ca_cert=dir / CA_CERT,
        ca_key=dir / CA_KEY,
        server_cert=dir / SERVER_CERT,
        server_key=dir / SERVER_KEY,
    )

    ca = _load_pair(tls.ca_cert, tls.ca_key)
    if ca is None or not _ca_usable(ca[0]):
        ca = _make_ca()
        _write_key(tls.ca_key, ca[1])
        _write_cert(tls.ca_cert, ca[0])
    ca_cert, ca_key = ca

    server = _load_pair(tls.server_cert, tls.server_key)
    if server is None or not _server_fits(server[0], ca_cert, want_ips, want_names):
        cert, key = _make_server(ca_cert, ca_key, ips=want_ips, names=want_names)
        _write_key(tls.server_key, key)
        _write_cert(tls.server_cert, cert)

    for key_path in (tls.ca_key, tls.server_key):
        if key_path.stat().st_mode & 0o777 != 0o600:
            key_path.chmod(0o600)
    return tls


# --------------------------------------------------------------------------------------------


def _parse_ips(ips: Iterable[str]) -> list[IPAddress]:
    out: list[IPAddress] = []
    for text in ips:
        addr = ipaddress.ip_address(str(text).strip().strip("[]"))
        if addr not in out:
            out.append(addr)
    return out


def _normalize_names(names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        norm = str(name).strip().rstrip(".").lower()
        if not norm:
            raise ValueError(f"empty DNS name in {list(names)!r}")
        if norm not in out:
            out.append(norm)
    return out


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _load_pair(cert_path: Path, key_path: Path):  # noqa: ANN202
    """(certificate, key) when both files exist, parse, and belong together; else None."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if cert.public_key().public_bytes(enc, pub) != key.public_key().public_bytes(enc, pub):
        return None
    return cert, key


def _valid_for_a_while(cert: x509.Certificate) -> bool:
    now = _now()
    return cert.not_valid_before_utc <= now and cert.not_valid_after_utc - RENEW_BEFORE > now


def _ca_usable(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        return False
    return bc.ca and _valid_for_a_while(cert)


def _server_fits(
    cert: x509.Certificate,
    ca_cert: x509.Certificate,
    ips: list[IPAddress],
    names: list[str],
) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if not _valid_for_a_while(cert):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have_ips = set(san.get_values_for_type(x509.IPAddress))
    have_names = {n.rstrip(".").lower() for n in san.get_values_for_type(x509.DNSName)}
    return have_ips == set(ips) and have_names == set(names)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _make_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "autocode lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_server(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    ips: list[IPAddress],
    names: list[str],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    common_name = names[0] if names else str(ips[0])
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "autocode lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    san = [x509.IPAddress(ip) for ip in ips] + [x509.DNSName(n) for n in names]
    now = _now()
    not_after = min(now + dt.timedelta(days=SERVER_DAYS), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is masked by the umask
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if fd != -1:
            os.close(fd)
        tmp.unlink(missing_ok=True)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(path, pem, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
