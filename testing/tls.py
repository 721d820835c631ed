"""Test TLS material: a CA and a server certificate for 127.0.0.1 signed by it, and a
server context for them. Used by the Vault double, the proxy tests' upstreams and others."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_tls_files(directory: Path, name: str, dns_names: tuple[str, ...] = ()
                   ) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (and `dns_names`) signed by it:
    (ca, cert, key) paths."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def build(subject, issuer, public_key, signing_key, is_ca, extra=()):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None),
                                  critical=True))
        for extension in extra:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(signing_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca_cert = build(ca_name, ca_name, ca_key.public_key(), ca_key, True,
                    [x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                   content_commitment=False, key_encipherment=False,
                                   data_encipherment=False, key_agreement=False,
                                   encipher_only=False, decipher_only=False)])
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), ca_name,
                 key.public_key(), ca_key, False,
                 [x509.SubjectAlternativeName(
                     [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                      *(x509.DNSName(n) for n in dns_names)])])
    paths = (directory / f"{name}-ca.pem", directory / f"{name}-cert.pem",
             directory / f"{name}-key.pem")
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def make_mtls_files(directory: Path, name: str, clients: tuple[str, ...]) -> dict:
    """A CA, a server certificate for 127.0.0.1 and a client certificate per name in
    `clients` (its CN), all signed by the CA: {"ca", "cert", "key", "clients": {cn: (cert,
    key)}}. A second call makes a second, unrelated CA (a stranger's certificates)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])

    def signed(subject: x509.Name, key, is_ca: bool, extensions=()) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None),
                                  critical=True))
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    def write(stem: str, cert: x509.Certificate, key) -> tuple[Path, Path]:
        cert_path, key_path = directory / f"{stem}-cert.pem", directory / f"{stem}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path

    ca_path = directory / f"{name}-ca.pem"
    ca_path.write_bytes(signed(ca_name, ca_key, True).public_bytes(serialization.Encoding.PEM))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = signed(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]),
                    server_key, False, [x509.SubjectAlternativeName(
                        [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])])
    cert, key = write(f"{name}-server", server, server_key)
    issued = {}
    for client in clients:
        client_key = ec.generate_private_key(ec.SECP256R1())
        issued[client] = write(f"{name}-{client}", signed(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, client)]), client_key, False),
            client_key)
    return {"ca": ca_path, "cert": cert, "key": key, "clients": issued}
