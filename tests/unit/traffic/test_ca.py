"""The proxy CA, made by the runtime with mitmproxy's own code (`--init-ca`), run as the
deploy runs it: a subprocess of the installed console script."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509

SHIPPER = Path(sys.executable).with_name("autocode-traffic-shipper")


def init_ca(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(SHIPPER), "--init-ca", str(folder)], capture_output=True,
                          text=True, timeout=120)


def test_makes_a_ca_mitmproxy_loads_with_a_private_key(tmp_path):
    from mitmproxy.certs import CertStore

    proc = init_ca(tmp_path)
    assert proc.returncode == 0, proc.stderr
    key, cert = tmp_path / "mitmproxy-ca.pem", tmp_path / "mitmproxy-ca-cert.pem"
    assert proc.stdout.strip() == str(cert)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate(cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    store = CertStore.from_store(tmp_path, "mitmproxy", 2048)
    assert store.default_ca.fingerprint() == ca.fingerprint(ca.signature_hash_algorithm)


def test_never_replaces_an_existing_key_and_restores_a_deleted_certificate(tmp_path):
    assert init_ca(tmp_path).returncode == 0
    key, cert = tmp_path / "mitmproxy-ca.pem", tmp_path / "mitmproxy-ca-cert.pem"
    key_before, cert_before = key.read_bytes(), cert.read_bytes()
    assert init_ca(tmp_path).returncode == 0
    assert key.read_bytes() == key_before
    cert.unlink()
    assert init_ca(tmp_path).returncode == 0
    assert key.read_bytes() == key_before and cert.read_bytes() == cert_before


def test_a_folder_that_is_missing_or_a_key_file_that_is_not_one_is_a_clear_error(tmp_path):
    proc = init_ca(tmp_path / "missing")
    assert proc.returncode == 2 and "is not a folder" in proc.stderr
    (tmp_path / "mitmproxy-ca.pem").write_text("garbage\n")
    proc = init_ca(tmp_path)
    assert proc.returncode == 2 and "holds no key and certificate" in proc.stderr
    assert (tmp_path / "mitmproxy-ca.pem").read_text() == "garbage\n"
