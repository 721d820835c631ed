"""Test TLS material: a CA and a server certificate for 127.0.0.1 signed by it, and a
server context for them. Used by the Vault double, the proxy tests' upstreams and others;
with client certificates for autocode-control's tests."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CA_USAGE = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                         content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, encipher_only=False,
                         decipher_only=False)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _signed(subject: x509.Name, key, issuer: x509.Name, ca_key, is_ca: bool,
            extensions=()) -> x509.Certificate:
    """A day's certificate for `key`'s public half, signed by `ca_key`."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True))
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _write(cert_path: Path, cert: x509.Certificate, key_path: Path, key) -> None:
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


def _ca(name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(f"{name} test CA")
    return key, subject, _signed(subject, key, subject, key, True, [CA_USAGE])


def _server(ca_key, ca_name: x509.Name, dns_names: tuple[str, ...] = ()):
    key = ec.generate_private_key(ec.SECP256R1())
    return key, _signed(_name("127.0.0.1"), key, ca_name, ca_key, False, [
        x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                     *(x509.DNSName(n) for n in dns_names)])])


def make_tls_files(directory: Path, name: str, dns_names: tuple[str, ...] = ()
                   ) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (and `dns_names`) signed by it:
    (ca, cert, key) paths."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_name, ca_cert = _ca(name)
    key, cert = _server(ca_key, ca_name, dns_names)
    paths = (directory / f"{name}-ca.pem", directory / f"{name}-cert.pem",
             directory / f"{name}-key.pem")
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(paths[1], cert, paths[2], key)
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
    ca_key, ca_name, ca_cert = _ca(name)
    ca_path = directory / f"{name}-ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    def issue(stem: str, key, cert) -> tuple[Path, Path]:
        paths = directory / f"{name}-{stem}-cert.pem", directory / f"{name}-{stem}-key.pem"
        _write(paths[0], cert, paths[1], key)
        return paths

    server = issue("server", *_server(ca_key, ca_name))
    clients_issued = {client: issue(client, *_client(client, ca_key, ca_name))
                      for client in clients}
    return {"ca": ca_path, "cert": server[0], "key": server[1], "clients": clients_issued}

def _client(common_name: str, ca_key, ca_name: x509.Name):
    key = ec.generate_private_key(ec.SECP256R1())
    return key, _signed(_name(common_name), key, ca_name, ca_key, False)
