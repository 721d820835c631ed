"""The proxy's CA, made with mitmproxy's own code in the layout mitmdump reads.

`autocode-traffic-shipper --init-ca DIR` makes it once: an existing key is never replaced
(workers already trust its certificate), and a certificate file deleted by hand is written
again from the key file, which holds both.
"""

from __future__ import annotations

import os
from pathlib import Path

BASENAME = "mitmproxy"
KEY_FILE = f"{BASENAME}-ca.pem"  # private key and certificate
CERT_FILE = f"{BASENAME}-ca-cert.pem"
KEY_SIZE = 2048


class CAError(RuntimeError):
    """The CA folder cannot be used as it is."""


def init_ca(confdir: str | Path) -> Path:
    """Make the CA in `confdir` unless its key exists; return the certificate's path."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from mitmproxy.certs import CertStore

    folder = Path(confdir)
    if not folder.is_dir():
        raise CAError(f"{folder} is not a folder; create it (the deploy does) and run again")
    key, cert = folder / KEY_FILE, folder / CERT_FILE
    old_umask = os.umask(0o077)  # the key is born private, not made private afterwards
    try:
        if key.exists():
            text = key.read_bytes()
            if b"PRIVATE KEY-----" not in text or b"-----BEGIN CERTIFICATE-----" not in text:
                raise CAError(f"{key} holds no key and certificate; move it away to make a "
                              "new CA (workers must then trust the new certificate)")
            if not cert.exists():
                pem = x509.load_pem_x509_certificate(text).public_bytes(Encoding.PEM)
                staged = cert.with_suffix(".new")
                staged.write_bytes(pem)
                staged.chmod(0o644)
                staged.replace(cert)
        else:
            CertStore.from_store(folder, BASENAME, KEY_SIZE)
    finally:
        os.umask(old_umask)
    return cert
