"""The external cluster's API key from the platform's Vault (elasticsearch_credentials_vault_path):
read against a real OpenBao server (testing/openbao.py, the server the lab deploys), taken
from the seed file when the seed writes it, the orchestrator's key kept while Vault cannot
be read; the key checked before any host is touched and never echoed; and the Elasticsearch
double's API-key authentication that the deploy and the traffic shipper pass (twin: a real
cluster with AUTOCODE_TEST_ES_URL and AUTOCODE_TEST_ES_API_KEY)."""

from __future__ import annotations

import asyncio
import base64
import os

import pytest
import yaml

from autocode.traffic.shipper import Shipper
from infra import vault
from infra.elasticsearch import (
    ElasticsearchAPI,
    ElasticsearchError,
    apply,
    wait_until_answering,
)
from infra.inventory_file import group_defaults
from infra.settings import HostSettings
from roles import CATALOGUE as components
from settings import elasticsearch as es_settings
from settings.elasticsearch import API_KEY_FILE, Credentials, Elasticsearch, client_inputs
from settings.vault import Vault
from tasks import elasticsearch, mitmproxy
from testing.elasticsearch_double import ESDouble
from testing.openbao import OpenBao
from testing.traffic import fake_record, make_config, write_segment

ORCH = group_defaults("orchestrator")
KEY = base64.b64encode(b"vault-key-id:VAULT-HELD-SECRET-91c3").decode()
ON_HOST = base64.b64encode(b"old-key-id:ON-HOST-SECRET-07aa").decode()
PATH = "elasticsearch/autocode"
REAL_ES_URL = os.environ.get("AUTOCODE_TEST_ES_URL")
REAL_ES_KEY = os.environ.get("AUTOCODE_TEST_ES_API_KEY")


def external(**overrides) -> dict:
    return {**ORCH, "elasticsearch_mode": "external", "elasticsearch_url": "https://es:9243",
            "elasticsearch_credentials_vault_path": PATH, **overrides}


def problems_for(**overrides) -> list[str]:
    return components.check_host("orchestrator", "orchestrator",
                                 {**external(), "ssh_hostname": "10.0.0.10",
                                  "worker_network": "10.0.1.0/24", **overrides})


def from_vault(data, session_of_run, orchestrator):
    return es_settings.from_vault(Elasticsearch.from_data(data), Vault.from_data(data),
                                  session_of_run, orchestrator)


class Orchestrator:
    """Stands in for the pyinfra host object only: the key file's text as a fact reads it."""

    name = "orchestrator"

    def __init__(self, key_file_text: str | None) -> None:
        self.text = key_file_text
        self.asked: list[dict] = []

    def get_fact(self, fact, **kwargs):
        self.asked.append(kwargs)
        return self.text


def session_for(bao: OpenBao, keys: vault.KeysFile):
    """The deploy's own session object (infra/vault.py) on the real server."""
    session = vault.Session(url=bao.url, keys=keys, orchestrator=None, ca_path="unused")
    session.ca_pem = bao.ca_pem
    return lambda: session


# -- read from Vault ------------------------------------------------------------------------


def test_the_key_is_read_from_vault_with_the_deploys_token(ready):
    bao, keys, admin = ready
    admin.put(f"{vault.KV_MOUNT}/data/{PATH}", {"data": {"api_key": KEY}})
    host = Orchestrator(ON_HOST)
    got = from_vault(external(), session_for(bao, keys), host)
    assert got == elasticsearch.Credentials(write=KEY, in_force=KEY)
    assert host.asked == []  # the host's file is not even read when Vault answers


def test_a_secret_missing_from_vault_keeps_the_key_on_the_orchestrator(ready, caplog):
    bao, keys, admin = ready
    got = from_vault(external(), session_for(bao, keys), Orchestrator(ON_HOST + "\n"))
    assert got.write is None and got.in_force == ON_HOST
    assert f"no api_key field at secret/{PATH}" in got.waiting
    assert "bao kv put" in got.waiting
    # The secret without that field: the same, naming the field.
    admin.put(f"{vault.KV_MOUNT}/data/{PATH}", {"data": {"key": KEY}})
    got = from_vault(external(), session_for(bao, keys), Orchestrator(None))
    assert got == elasticsearch.Credentials(waiting=got.waiting) and "api_key" in got.waiting
    assert "index management and the clients' key wait" in caplog.text


def test_a_value_in_vault_that_is_no_api_key_is_not_used_nor_echoed(ready):
    bao, keys, admin = ready
    admin.put(f"{vault.KV_MOUNT}/data/{PATH}", {"data": {"api_key": "plain-PASSWORD-4411"}})
    got = from_vault(external(), session_for(bao, keys), Orchestrator(ON_HOST))
    assert got.write is None and got.in_force == ON_HOST
    assert "base64" in got.waiting and "PASSWORD" not in got.waiting


def test_a_vault_not_yet_initialised_or_sealed_waits(bao, tmp_path):
    keys = vault.KeysFile(tmp_path / "keys.json")
    got = from_vault(external(), session_for(bao, keys), Orchestrator(None))
    assert got == elasticsearch.Credentials(waiting=got.waiting)
    assert "not initialised and unsealed" in got.waiting
    # Initialised, then sealed (a reboot): the orchestrator's key stays in use.
    vault.initialise(bao.api(), keys, vault.InitPlan(shares=1, threshold=1))
    got = from_vault(external(), session_for(bao, keys), Orchestrator(ON_HOST))
    assert got.write is None and got.in_force == ON_HOST and "unsealed" in got.waiting


def test_a_lost_admin_token_is_said_not_raised(ready):
    bao, keys, admin = ready
    admin.put(f"{vault.KV_MOUNT}/data/{PATH}", {"data": {"api_key": KEY}})
    doc = keys.load()
    doc["admin_token"] = "s.not-a-token"
    keys.path.write_text(__import__("json").dumps(doc))
    got = from_vault(external(), session_for(bao, keys), Orchestrator(ON_HOST))
    assert got.in_force == ON_HOST and "HTTP 403" in got.waiting


# -- the seed ---------------------------------------------------------------------------------


def test_a_key_the_seed_writes_is_used_without_asking_vault(tmp_path):
    seed = tmp_path / "seed.yaml"
    seed.write_text(yaml.safe_dump({PATH: {"api_key": KEY}, "crypto/TON": {"seed": "x"}}))
    seed.chmod(0o600)
    data = external(vault_seed_file=str(seed))
    assert problems_for(vault_seed_file=str(seed)) == []

    def no_vault():
        raise AssertionError("Vault asked although the seed gives the key")

    assert from_vault(data, no_vault, Orchestrator(ON_HOST)) == \
        elasticsearch.Credentials(write=KEY, in_force=KEY)


def test_a_seeded_value_that_is_no_api_key_is_refused_before_connecting(tmp_path):
    seed = tmp_path / "seed.yaml"
    seed.write_text(yaml.safe_dump({PATH: {"api_key": "hunter2-SEEDED"}}))
    seed.chmod(0o600)
    found = problems_for(vault_seed_file=str(seed))
    assert any("elasticsearch_credentials_vault_path:" in p and PATH in p for p in found), found
    assert not any("hunter2" in p for p in found)
    seed.write_text(yaml.safe_dump({PATH: {"token": KEY}}))
    found = problems_for(vault_seed_file=str(seed))
    assert any("api_key field" in p for p in found), found


# -- bad settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "says"), [
    ({"elasticsearch_credentials_vault_path": "../elasticsearch"}, "not a secret path"),
    ({"elasticsearch_credentials_vault_path": "es/*"}, "not a secret path"),
    ({"elasticsearch_credentials_vault_path": 7}, "not a secret path"),
    ({"elasticsearch_mode": "local"}, "is for elasticsearch_mode: external"),
])
def test_bad_vault_paths_are_refused_naming_the_field(overrides, says):
    found = problems_for(**overrides)
    assert any("elasticsearch_credentials_vault_path:" in p and says in p for p in found), found


def test_a_key_in_both_a_file_and_vault_is_refused(tmp_path):
    creds = tmp_path / "es.key"
    creds.write_text(KEY)
    creds.chmod(0o600)
    found = problems_for(elasticsearch_credentials_file=str(creds))
    assert any("elasticsearch_credentials_vault_path:" in p and "both" in p for p in found)
    assert problems_for(elasticsearch_credentials_vault_path=None,
                        elasticsearch_credentials_file=str(creds)) == []


# -- what the clients get -------------------------------------------------------------------


def test_clients_get_the_key_file_and_restart_when_the_key_changes():
    settings = HostSettings(external())
    es = settings[Elasticsearch]
    key = Credentials(write=KEY, in_force=KEY)
    traffic = yaml.safe_load(mitmproxy.traffic_config(settings, {}, es_key=key))
    assert traffic["elasticsearch"]["api_key_file"] == API_KEY_FILE
    assert KEY not in mitmproxy.traffic_config(settings, {}, es_key=key)
    first = client_inputs(es, key)
    key = Credentials(in_force=ON_HOST, waiting="sealed")
    assert client_inputs(es, key) != first  # the key in force is what counts
    assert key.filebeat_key() == "old-key-id:ON-HOST-SECRET-07aa"
    # No key at all yet: the clients are not pointed at a file that does not exist.
    key = Credentials(waiting="sealed")
    assert "api_key_file" not in yaml.safe_load(mitmproxy.traffic_config(
        settings, {}, es_key=key))["elasticsearch"]
    assert client_inputs(es, key) == {}


# -- the double's API-key authentication, and its twin ------------------------------------------


@pytest.fixture(params=["es_double", "real_es"])
def secured(request):
    """(url, the key it accepts) of a cluster that wants an API key."""
    if request.param == "es_double":
        double = ESDouble()
        double.api_keys = {KEY}
        double.start()
        yield double.url, KEY
        double.stop()
        return
    if not (REAL_ES_URL and REAL_ES_KEY):
        pytest.skip("set AUTOCODE_TEST_ES_URL and AUTOCODE_TEST_ES_API_KEY (a cluster with "
                    "security on) to run against a real cluster")
    yield REAL_ES_URL, REAL_ES_KEY


def test_a_secured_cluster_refuses_no_key_and_a_wrong_key(secured):
    url, key = secured
    ca = os.environ.get("AUTOCODE_TEST_ES_CA_CERTS")
    ca_pem = open(ca).read() if ca and url == REAL_ES_URL else None
    assert ElasticsearchAPI(url, api_key=key, ca_pem=ca_pem).info() is not None
    for wrong in (None, ON_HOST):
        api = ElasticsearchAPI(url, api_key=wrong, ca_pem=ca_pem)
        with pytest.raises(ElasticsearchError) as caught:
            api.get("/_ilm/policy")
        assert "HTTP 401 security_exception" in str(caught.value)
        # Said as refused credentials, not waited out as a node that does not answer yet.
        with pytest.raises(ElasticsearchError) as caught:
            api.info()
        assert "HTTP 401" in str(caught.value) and "elasticsearch_credentials" in str(
            caught.value)
        assert (wrong or "@@") not in str(caught.value)
        # What the apply does with it: fails with the refusal, not "did not answer".
        with pytest.raises(ElasticsearchError) as caught:
            wait_until_answering(api, 120)
        assert "HTTP 401" in str(caught.value) and "did not answer" not in str(caught.value)


def test_the_deploys_objects_and_the_shippers_records_pass_the_doubles_key(tmp_path):
    double = ESDouble()
    double.api_keys = {KEY}
    double.start()
    try:
        data = {**external(), "elasticsearch_url": double.url}
        objects = elasticsearch.index_objects(HostSettings(data))
        assert apply(ElasticsearchAPI(double.url, api_key=KEY), objects)
        key_file = tmp_path / "api-key"
        key_file.write_text(KEY + "\n")
        config = make_config(tmp_path / "spool", elasticsearch={
            "url": double.url, "index": "autocode-traffic", "api_key_file": str(key_file)})
        records = [fake_record(n) for n in range(20)]
        write_segment(config.spool_dir, 1, records)
        shipper = Shipper(config)

        async def drain():
            try:
                await shipper.drain()
            finally:
                await shipper.close()

        asyncio.run(drain())
        assert sorted(double.ids("autocode-traffic")) == sorted(r["record_id"] for r in records)
        assert double.unauthenticated == 0
    finally:
        double.stop()
