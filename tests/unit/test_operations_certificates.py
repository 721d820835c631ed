"""infra/operations.py's certificate operations, facts in, commands out
(testing/operations.py): signed_certificate, certificate_signed_on_host, and what
_sign_on_host does when a run gets to it."""

from __future__ import annotations

import time

import pytest
from pyinfra.api import OperationError

from infra.facts import CertificateState, PathStates
from infra.operations import _sign_on_host, certificate_signed_on_host, signed_certificate
from testing.operations import Call, FakeConnection, FakeDeploy, fact, path_state, run

TLS = "/etc/autocode/tls"
CERT, KEY, CA_CERT, CA_KEY = (f"{TLS}/server.crt", f"{TLS}/server.key", f"{TLS}/ca.crt",
                              "/etc/autocode/pki/ca.key")
NAMES = ("orchestrator", "10.0.1.1")
SANS = ["DNS:orchestrator", "IPAddress:10.0.1.1"]  # as CertificateState reads openssl's
DAY = 86400
ARGS = {"cert": CERT, "key": KEY, "ca_cert": CA_CERT, "ca_key": CA_KEY,
        "common_name": "orchestrator", "names": NAMES, "user": "root", "group": "vault"}
CERT_FACT = fact(CertificateState, cert=CERT, key=KEY, ca_cert=CA_CERT)
FILES_FACT = fact(PathStates, paths=(CERT, KEY))


def cert_state(days_left: float = 200, sans=SANS, verifies=True, key_matches=True) -> dict:
    return {"end": int(time.time() + days_left * DAY), "sans": sorted(sans),
            "verifies": verifies, "key_matches": key_matches}


def files(cert=("root", "vault", "644"), key=("root", "vault", "640")) -> dict:
    return {CERT: path_state("file", *cert), KEY: path_state("file", *key)}


def facts(state=None, owners=None, **kwargs) -> dict:
    return {CERT_FACT: cert_state(**kwargs) if state is None else state,
            FILES_FACT: owners or files()}


EXTENSIONS = ("basicConstraints=critical,CA:FALSE\n"
              "keyUsage=critical,digitalSignature,keyEncipherment\n"
              "extendedKeyUsage=serverAuth,clientAuth\n")
REQUEST = (f"umask 077 && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 "
           f"-nodes -keyout {KEY}.autocode-new -out {CERT}.csr -subj /CN=orchestrator "
           f"-addext subjectAltName=DNS:orchestrator,IP:10.0.1.1 2>/dev/null")
INSTALL = [f"chown root:vault {KEY}.autocode-new {CERT}.autocode-new && chmod 640 "
           f"{KEY}.autocode-new && chmod 644 {CERT}.autocode-new",
           f"mv -f {KEY}.autocode-new {KEY} && mv -f {CERT}.autocode-new {CERT} && "
           f"rm -f {CERT}.csr {CERT}.ext"]
NEW = [REQUEST, f"printf '{EXTENSIONS}' > {CERT}.ext",
       f"openssl x509 -req -in {CERT}.csr -CA {CA_CERT} -CAkey {CA_KEY} "
       f"-set_serial 0x$(openssl rand -hex 16) -days 365 -copy_extensions copy "
       f"-extfile {CERT}.ext -out {CERT}.autocode-new 2>/dev/null",
       *INSTALL]


def test_signed_certificate_valid_and_not_due_is_a_noop():
    result = run(signed_certificate, **ARGS, facts=facts())
    assert result.commands == []
    assert result.noops == [f"{CERT} is valid for orchestrator, 10.0.1.1 and not due for "
                            "renewal"]


def test_signed_certificate_names_in_another_order_or_repeated_are_the_same_names():
    result = run(signed_certificate, **{**ARGS, "names": ("10.0.1.1", "orchestrator",
                                                          "10.0.1.1")}, facts=facts())
    assert result.commands == []


@pytest.mark.parametrize("owners, commands", [
    (files(key=("root", "vault", "644")), [f"chmod 640 {KEY}"]),
    (files(cert=("vault", "vault", "644")), [f"chown root:vault {CERT}"]),
    (files(("root", "root", "600"), ("root", "root", "600")),
     [f"chown root:vault {CERT}", f"chmod 644 {CERT}", f"chown root:vault {KEY}",
      f"chmod 640 {KEY}"]),
], ids=["key mode", "cert owner", "both"])
def test_signed_certificate_kept_but_owner_or_mode_drifted_fixes_only_that(owners, commands):
    result = run(signed_certificate, **ARGS, facts=facts(owners=owners))
    assert result.commands == commands
    assert result.noops == []


def test_signed_certificate_missing_is_made_here_key_and_all():
    result = run(signed_certificate, **ARGS, facts={CERT_FACT: None})
    assert result.commands == NEW
    assert result.noops == []


@pytest.mark.parametrize("state", [
    cert_state(days_left=30 - 1 / 24), cert_state(days_left=-1),
    cert_state(sans=["DNS:orchestrator"]),
    cert_state(sans=[*SANS, "DNS:old-name"]),
    cert_state(verifies=False), cert_state(key_matches=False),
], ids=["due within renew_days", "expired", "a name missing", "another name",
        "not from this CA", "not its key"])
def test_signed_certificate_is_made_anew_when_it_is_not_what_is_wanted(state):
    result = run(signed_certificate, **ARGS, facts={CERT_FACT: state})
    assert result.commands == NEW


def test_signed_certificate_renew_days_is_the_renewal_margin():
    assert run(signed_certificate, **ARGS, facts=facts(days_left=30 + 1 / 24)).commands == []
    assert run(signed_certificate, **ARGS, renew_days=5,
               facts=facts(days_left=6)).commands == []
    assert run(signed_certificate, **ARGS, renew_days=7,
               facts={CERT_FACT: cert_state(days_left=6)}).commands == NEW


def test_signed_certificate_days_and_subject_are_quoted_into_the_commands():
    result = run(signed_certificate, **{**ARGS, "common_name": "it's a CA", "days": "90"},
                 facts={CERT_FACT: None})
    assert "-subj '/CN=it'\"'\"'s a CA'" in result.commands[0]
    assert " -days 90 " in result.commands[2]


def test_signed_certificate_reads_owners_from_its_batch():
    batch = (CA_KEY, CA_CERT, CERT, KEY)
    result = run(signed_certificate, **ARGS, batch=batch, facts={
        CERT_FACT: cert_state(), fact(PathStates, paths=batch): {
            **files(), CA_KEY: path_state(mode="600"), CA_CERT: path_state()}})
    assert result.commands == [] and len(result.noops) == 1


@pytest.mark.xfail(strict=True, reason="signed_certificate does not check that `batch` "
                   "includes the certificate and key: a valid certificate then fails the plan "
                   "with a KeyError rather than an OperationError naming the mistake")
def test_signed_certificate_batch_must_include_cert_and_key():
    with pytest.raises(OperationError):
        run(signed_certificate, **ARGS, batch=(CA_KEY,), facts={
            CERT_FACT: cert_state(), fact(PathStates, paths=(CA_KEY,)): {CA_KEY: path_state()}})


@pytest.mark.xfail(strict=True, reason="openssl prints an IPv6 subject alternative name "
                   "expanded and upper-case (IPAddress:FD00:0:0:0:0:0:0:1, seen with OpenSSL "
                   "3.0), the operation compares it with IPAddress:fd00::1: a certificate for "
                   "an IPv6 address is made anew (and its service restarted) on every apply")
def test_signed_certificate_valid_for_an_ipv6_address_is_a_noop():
    names = ("orchestrator", "fd00::1")
    result = run(signed_certificate, **{**ARGS, "names": names}, facts=facts(
        sans=["DNS:orchestrator", "IPAddress:FD00:0:0:0:0:0:0:1"]))
    assert result.commands == []


# --- certificate_signed_on_host ------------------------------------------------------------

SIGNER_CA_CERT, SIGNER_CA_KEY = "/etc/autocode/pki/ca.crt", "/etc/autocode/pki/ca.key"
ON_HOST = {**{k: v for k, v in ARGS.items() if k != "ca_key"}, "signer": "orchestrator",
           "signer_ca_cert": SIGNER_CA_CERT, "signer_ca_key": SIGNER_CA_KEY,
           "common_name": "worker1", "names": ("worker1", "10.0.2.11")}
WORKER_REQUEST = (f"umask 077 && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 "
                  f"-nodes -keyout {KEY}.autocode-new -out {CERT}.csr -subj /CN=worker1 "
                  f"-addext subjectAltName=DNS:worker1,IP:10.0.2.11 2>/dev/null")
WORKER_SANS = ["DNS:worker1", "IPAddress:10.0.2.11"]


def on_worker(state) -> FakeDeploy:
    return FakeDeploy({CERT_FACT: state, FILES_FACT: files()}, host="worker1",
                      others={"orchestrator": {}})


def test_certificate_signed_on_host_valid_and_not_due_is_a_noop():
    result = on_worker(cert_state(sans=WORKER_SANS)).run(certificate_signed_on_host, **ON_HOST)
    assert result.commands == []
    assert result.noops == [f"{CERT} is valid for worker1, 10.0.2.11 and not due for renewal"]


def test_certificate_signed_on_host_owner_drift_fixes_only_that():
    deploy = FakeDeploy({CERT_FACT: cert_state(sans=WORKER_SANS),
                         FILES_FACT: files(key=("root", "root", "640"))}, host="worker1")
    assert deploy.run(certificate_signed_on_host, **ON_HOST).commands == \
        [f"chown root:vault {KEY}"]


@pytest.mark.parametrize("state", [None, cert_state(days_left=10, sans=WORKER_SANS),
                                   cert_state(sans=SANS), cert_state(sans=WORKER_SANS,
                                                                     verifies=False)],
                         ids=["missing", "due", "other names", "not from this CA"])
def test_certificate_signed_on_host_key_here_request_signed_there(state):
    result = on_worker(state).run(certificate_signed_on_host, **ON_HOST)
    assert result.commands == [
        WORKER_REQUEST,
        Call(_sign_on_host, ("orchestrator", SIGNER_CA_CERT, SIGNER_CA_KEY, f"{CERT}.csr",
                             f"{CERT}.autocode-new", 365), {}),
        INSTALL[0], f"mv -f {KEY}.autocode-new {KEY} && mv -f {CERT}.autocode-new {CERT} && "
                    f"rm -f {CERT}.csr"]


CSR = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----"
SIGNED = "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----"
SIGN = Call(_sign_on_host, ("orchestrator", SIGNER_CA_CERT, SIGNER_CA_KEY, f"{CERT}.csr",
                            f"{CERT}.autocode-new", 90), {})


def signing(csr=CSR, signed=SIGNED, signer_put_ok=True, put_ok=True):
    deploy = FakeDeploy(host="worker1", others={"orchestrator": {}})
    mine = deploy.connect("worker1", FakeConnection(lambda command: (True, csr),
                                                    put_ok=put_ok))
    signer = deploy.connect("orchestrator", FakeConnection(
        lambda command: (True, signed if "openssl x509" in command else ""),
        put_ok=signer_put_ok))
    return deploy, mine, signer


def test_sign_on_host_sends_only_the_request_and_brings_back_only_the_certificate():
    deploy, mine, signer = signing()
    deploy.call(SIGN)
    staged = "/run/autocode-deploy/worker1"
    assert mine.commands == [f"cat -- {CERT}.csr"]
    assert signer.files == {f"{staged}.csr": CSR + "\n"}
    assert signer.commands == [
        "install -d -m 700 /run/autocode-deploy",
        f"printf '{EXTENSIONS}' > {staged}.ext && openssl x509 -req -in {staged}.csr -CA "
        f"{SIGNER_CA_CERT} -CAkey {SIGNER_CA_KEY} -set_serial 0x$(openssl rand -hex 16) "
        f"-days 90 -copy_extensions copy -extfile {staged}.ext 2>/dev/null; status=$?; "
        f"rm -f {staged}.csr {staged}.ext; exit $status"]
    assert mine.files == {f"{CERT}.autocode-new": SIGNED + "\n"}
    assert not any(KEY in command for command in mine.commands + signer.commands)


@pytest.mark.parametrize("kwargs, message", [
    ({"csr": ""}, f"could not read the signing request {CERT}.csr on worker1"),
    ({"signer_put_ok": False}, "could not send worker1's signing request to orchestrator"),
    ({"signed": "unable to load CA private key"},
     "orchestrator could not sign worker1's certificate request"),
    ({"put_ok": False}, f"could not write {CERT}.autocode-new on worker1"),
], ids=["no request", "request not sent", "not signed", "certificate not written"])
def test_sign_on_host_fails_the_operation_at_each_step_that_fails(kwargs, message):
    deploy, mine, _ = signing(**kwargs)
    with pytest.raises(OperationError, match=message):
        deploy.call(SIGN)
    if "put_ok" not in kwargs:
        assert mine.files == {}
