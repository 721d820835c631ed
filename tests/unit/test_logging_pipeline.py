"""The logging pipeline without hosts: elasticsearch.yml and filebeat.yml rendered and parsed
key by key against the seed; index management against the Elasticsearch double
(`[es_double]`) and, with AUTOCODE_TEST_ES_URL, a real cluster (`[real_es]`); the rsyslog
forwarding configuration; every bad setting refused naming its field."""

from __future__ import annotations

import base64
import http.client
import json
import os
import uuid
from urllib.parse import urlsplit

import pytest
import yaml

from autocode.traffic.config import parse_config
from infra.apt_repository import sources_text
from infra.elasticsearch import ElasticsearchAPI, Managed, apply, covers, differing
from infra.inventory_file import group_defaults
from infra.render import render
from infra.settings import HostSettings
from roles import CATALOGUE as components
from settings.elasticsearch import API_KEY_FILE, CA_FILE, KEY_FINGERPRINT, credentials
from settings.log_forwarding import LogForwarding
from tasks import elasticsearch, filebeat, log_forwarding, mitmproxy
from testing.elasticsearch_double import ESDouble

ORCH = group_defaults("orchestrator")
WORKER = group_defaults("workers")
ROOT = ORCH["data_root"]
REAL_ES_URL = os.environ.get("AUTOCODE_TEST_ES_URL")


def orch(**overrides) -> dict:
    return {**ORCH, **overrides}


# -- elasticsearch.yml ------------------------------------------------------------------


def test_elasticsearch_yml_is_the_seeds_single_node():
    text = elasticsearch.render_node_config(HostSettings(orch(elasticsearch_mode="local")))
    assert text.startswith("# Managed by autocode")
    doc = yaml.safe_load(text)
    assert doc == {
        "cluster.name": "autocode-cluster",
        "node.name": "autocode-node-1",
        "path.data": f"{ROOT}/elasticsearch",
        "path.logs": f"{ROOT}/logs/orchestrator/elasticsearch",
        "path.repo": [f"{ROOT}/backups/elasticsearch"],
        "network.host": "0.0.0.0",
        "http.port": 9200,
        "discovery.type": "single-node",
        "xpack.security.enabled": False,
        "xpack.security.enrollment.enabled": False,
        "xpack.security.http.ssl.enabled": False,
        "xpack.security.transport.ssl.enabled": False,
        "xpack.monitoring.collection.enabled": True,
        "action.auto_create_index": "-autocode-logs*,-autocode-traffic*,+*",
    }


@pytest.mark.parametrize(("memory_mb", "override", "heap"), [
    (4096, None, 2048), (256 * 1024, None, 31 * 1024), (300, None, 256), (None, None, 1024),
    (64 * 1024, 8192, 8192)])
def test_heap_is_half_the_memory_at_most_31_gb(memory_mb, override, heap):
    settings = HostSettings(orch(elasticsearch_heap_mb=override))
    assert elasticsearch.heap_mb(settings, memory_mb) == heap
    text = render("elasticsearch/heap.options.j2", heap_mb=heap)
    assert f"-Xms{heap}m\n" in text and f"-Xmx{heap}m\n" in text


def test_elastic_repository_is_deb822_signed_and_pinned_by_major():
    repo = elasticsearch.repository("8.19.0")
    text = sources_text(repo, "bookworm")
    assert "URIs: https://artifacts.elastic.co/packages/8.x/apt\n" in text
    assert "Suites: stable\n" in text and f"Signed-By: {repo.keyring}\n" in text
    assert elasticsearch.repository("9.1.0").uris.endswith("/9.x/apt")


def test_elastic_repository_is_declared_once_per_host(monkeypatch):
    """Elasticsearch and Filebeat both ask for it: one key fetch, one sources file."""
    from infra import apt_repository

    calls = []

    class Host:
        name = "orchestrator"
        state = type("State", (), {})()

        @staticmethod
        def get_fact(cls, **kwargs):
            return {}

    monkeypatch.setattr(apt_repository, "host", Host)
    monkeypatch.setattr(apt_repository.server, "shell", lambda **kw: calls.append(("shell", kw)))
    monkeypatch.setattr(apt_repository, "file_content",
                        lambda **kw: calls.append(("file", kw)) or object())
    repo = elasticsearch.repository("8.19.0")
    first = apt_repository.apt_repository(repo, KEY_FINGERPRINT)
    second = apt_repository.apt_repository(repo, KEY_FINGERPRINT)
    assert first is second and [kind for kind, _ in calls] == ["shell", "file"]
    assert KEY_FINGERPRINT in " ".join(calls[0][1]["commands"])


# -- filebeat.yml -----------------------------------------------------------------------


def test_filebeat_yml_as_the_seed_says():
    text = filebeat.render_config(HostSettings(orch(elasticsearch_mode="local")))
    doc = yaml.safe_load(text)
    inputs = {i["id"]: i for i in doc["filebeat.inputs"]}
    assert len(inputs) == len(doc["filebeat.inputs"]) == 4  # unique ids
    assert all(i["type"] == "filestream" for i in inputs.values())
    orchestrator, workers, dns = (inputs["autocode-orchestrator"], inputs["autocode-workers"],
                                  inputs["autocode-dns"])
    assert f"{ROOT}/logs/orchestrator/**/*.log" in orchestrator["paths"]
    assert workers["paths"] == [f"{ROOT}/logs/workers/*/worker.log"]
    assert dns["paths"] == [f"{ROOT}/logs/traffic/dns/*.log"]
    for item in (orchestrator, workers):
        assert item["parsers"] == [{"ndjson": {"target": "", "add_error_key": True}}]
    assert "parsers" not in dns  # dnsmasq's lines are not JSON
    spend = inputs["autocode-spend-reports"]
    assert spend["paths"] == [f"{ROOT}/financial/reports/spend-*.ndjson"]
    assert spend["fields"]["service"] == "spend-report"
    assert spend["parsers"] == [{"ndjson": {"target": "", "add_error_key": True,
                                            "overwrite_keys": True}}]
    assert spend["processors"] == [{"fingerprint": {"fields": ["spend.id"],
                                                    "target_field": "@metadata._id"}}]
    for item, service in ((orchestrator, "orchestrator"), (workers, "worker"), (dns, "dns")):
        assert item["fields"] == {"service": service, "environment": "production"}
        assert item["fields_under_root"] is True
    assert workers["tags"] == ["forwarded"] and "tags" not in orchestrator
    assert workers["processors"][0]["dissect"]["tokenizer"] == \
        f"{ROOT}/logs/workers/%{{worker}}/worker.log"
    assert doc["processors"] == [{"add_host_metadata": {
        "when": {"not": {"contains": {"tags": "forwarded"}}}}}]
    out = doc["output.elasticsearch"]
    assert out == {"hosts": ["http://127.0.0.1:9200"], "index": "autocode-logs",
                   "compression_level": 1}
    assert doc["setup.template.enabled"] is False and doc["setup.ilm.enabled"] is False
    assert doc["setup.template.pattern"] == "autocode-logs*"


def test_filebeat_to_an_external_cluster_with_its_api_key(tmp_path):
    key = base64.b64encode(b"key-id:key-secret").decode()
    creds = tmp_path / "es.key"
    creds.write_text(key + "\n")
    creds.chmod(0o600)
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    data = orch(elasticsearch_mode="external", elasticsearch_url="https://logs.example.com:9243/",
                elasticsearch_credentials_file=str(creds), elasticsearch_ca_file=str(ca))
    settings = HostSettings(data)
    key = credentials(settings, None, None)
    doc = yaml.safe_load(filebeat.render_config(settings, key.filebeat_key()))
    out = doc["output.elasticsearch"]
    assert out["hosts"] == ["https://logs.example.com:9243"]
    assert out["api_key"] == "key-id:key-secret"  # Filebeat wants id:key, decoded
    assert out["ssl.certificate_authorities"] == [CA_FILE]
    # The traffic shipper gets the key's file, never the key, and the data stream.
    traffic = parse_config(yaml.safe_load(mitmproxy.traffic_config(settings, {}, es_key=key)))
    assert traffic.elasticsearch.url == "https://logs.example.com:9243"
    assert traffic.elasticsearch.index == "autocode-traffic"
    assert traffic.elasticsearch.api_key_file == API_KEY_FILE
    assert traffic.elasticsearch.ca_certs == CA_FILE
    assert "key-secret" not in mitmproxy.traffic_config(settings, {}, es_key=key)


def test_filebeat_is_planned_only_with_a_cluster():
    assert filebeat.enabled(HostSettings(orch(elasticsearch_mode="local")))
    assert not filebeat.enabled(HostSettings(orch(elasticsearch_mode="none")))
    assert not filebeat.enabled(HostSettings(orch(elasticsearch_mode="local",
                                                  filebeat_enabled=False)))


# -- index management -------------------------------------------------------------------


def _real(method, path, body=None):
    api = ElasticsearchAPI(REAL_ES_URL, api_key=os.environ.get("AUTOCODE_TEST_ES_API_KEY"),
                           ca_pem=(open(os.environ["AUTOCODE_TEST_ES_CA_CERTS"]).read()
                                   if os.environ.get("AUTOCODE_TEST_ES_CA_CERTS") else None))
    return api if method is None else api.request(method, path, body)


@pytest.fixture(params=["es_double", "real_es"])
def cluster(request):
    """(api, objects, double or None): the deploy's objects, renamed per test."""
    prefix = f"autocode-test-{uuid.uuid4().hex[:8]}"
    if request.param == "es_double":
        double = ESDouble()
        double.start()
        data = orch(elasticsearch_mode="external", elasticsearch_url=double.url)
        objects = elasticsearch.index_objects(HostSettings(data), prefix)
        yield ElasticsearchAPI(double.url), objects, double
        double.stop()
        return
    if not REAL_ES_URL:
        pytest.skip("set AUTOCODE_TEST_ES_URL to run against a real cluster")
    repo_path = os.environ.get("AUTOCODE_TEST_ES_REPO_PATH")
    data = orch(elasticsearch_mode="external", elasticsearch_url=REAL_ES_URL,
                elasticsearch_snapshot_repository={"type": "fs",
                                                   "settings": {"location": repo_path}})
    objects = elasticsearch.index_objects(HostSettings(data), prefix)
    if not repo_path:  # an fs repository must be under the cluster's path.repo
        objects = [o for o in objects if o.kind not in ("snapshot_repository", "slm_policy")]
    api = _real(None, None)
    yield api, objects, None
    for obj in reversed(objects):
        api.request("DELETE", obj.path)


def test_index_management_creates_everything_then_a_second_run_writes_nothing(cluster):
    api, objects, double = cluster
    written = apply(api, objects)
    assert [o.path for o in written] == [o.path for o in objects]
    assert differing(api, objects) == []
    before = len(api.calls)
    assert apply(api, objects) == []
    second = api.calls[before:]
    assert all(method == "GET" for method, _ in second) and len(second) == len(objects)
    if double is not None:
        assert all(m == "GET" for m, p in double.requests[-len(objects):])
        versions = {name: p["version"] for name, p in double.ilm_policies.items()}
        assert set(versions.values()) == {1}  # never re-PUT, so never bumped


def test_a_changed_retention_rewrites_only_its_policy(cluster):
    api, objects, _ = cluster
    apply(api, objects)
    changed = [Managed(o.kind, o.name, elasticsearch._lifecycle(7, "50gb"))
               if o.kind == "ilm_policy" and o.name.endswith("-logs") else o for o in objects]
    written = apply(api, changed)
    assert [(o.kind, o.name) for o in written] == [("ilm_policy", changed[0].name)]
    policy = api.get(f"/_ilm/policy/{changed[0].name}")[changed[0].name]["policy"]
    assert policy["phases"]["delete"]["min_age"] == "7d"


def test_the_traffic_stream_takes_the_shippers_records(cluster):
    """A record as the proxy writes it is accepted by the data stream's mappings."""
    api, objects, _ = cluster
    apply(api, objects)
    stream = next(o.name for o in objects if o.kind == "data_stream" and "traffic" in o.name)
    record = {"@timestamp": "2026-12-02T01:00:00.000Z", "record_id": uuid.uuid4().hex,
              "kind": "http", "verdict": "allowed", "worker_id": "worker1",
              "client_ip": "10.0.1.11", "server_ip": "203.0.113.5", "method": "GET",
              "url": "https://example.com/", "status": 200, "port": 443,
              "request_headers": {"user-agent": "curl"}, "response_headers": {},
              "request_bytes": 0, "response_bytes": 12, "duration_ms": 3.5, "error": None}
    body = (json.dumps({"create": {"_index": stream, "_id": record["record_id"]}}) + "\n"
            + json.dumps(record) + "\n")
    parts = urlsplit(api.url)
    conn = (http.client.HTTPSConnection if parts.scheme == "https" else
            http.client.HTTPConnection)(parts.hostname, parts.port, timeout=15)
    headers = {"Content-Type": "application/x-ndjson"}
    if api.api_key:
        headers["Authorization"] = f"ApiKey {api.api_key}"
    conn.request("POST", "/_bulk", body=body.encode(), headers=headers)
    answer = json.loads(conn.getresponse().read())
    conn.close()
    assert answer["errors"] is False, answer
    assert answer["items"][0]["create"]["status"] == 201


def test_covers_takes_elasticsearchs_defaults_and_string_settings():
    want = {"phases": {"hot": {"actions": {"rollover": {"max_age": "1d"}}}},
            "settings": {"index": {"number_of_replicas": "0"}}, "flag": False}
    have = {"phases": {"hot": {"min_age": "0ms", "actions": {"rollover": {"max_age": "1d"}}}},
            "settings": {"index": {"number_of_replicas": 0, "uuid": "x"}}, "flag": "false"}
    assert covers(have, want)
    assert not covers(have, {**want, "flag": True})
    assert not covers({"a": [1, 2]}, {"a": [1]})


def test_the_double_bumps_ilm_versions_and_needs_a_template_for_a_stream():
    double = ESDouble()
    double.start()
    try:
        api = ElasticsearchAPI(double.url)
        body = {"policy": {"phases": {"delete": {"min_age": "1d", "actions": {"delete": {}}}}}}
        api.put("/_ilm/policy/p", body)
        api.put("/_ilm/policy/p", body)
        assert api.get("/_ilm/policy/p")["p"]["version"] == 2  # as Elasticsearch does
        assert api.get("/_ilm/policy/missing") is None
        status, answer = api.request("PUT", "/_data_stream/nothing-matches")
        assert status == 400 and "no matching index template" in answer["error"]["reason"]
        api.put("/_index_template/t", {"index_patterns": ["logs-x*"], "data_stream": {}})
        api.put("/_data_stream/logs-x")
        assert api.get("/_data_stream/logs-x")["data_streams"][0]["template"] == "t"
        status, _ = api.request("PUT", "/_slm/policy/s", {"repository": "none"})
        assert status == 400  # the repository must exist first
    finally:
        double.stop()


# -- log forwarding ---------------------------------------------------------------------


def test_forwarder_reads_the_worker_logs_and_queues_on_disk_over_relp_tls():
    text = log_forwarding.forward_config(HostSettings(WORKER), "10.0.1.1", "orchestrator", tls=True)
    assert f'File="{ROOT}/logs/workers/*.log"' in text
    assert 'type="omrelp"' in text and 'target="10.0.1.1" port="2514"' in text
    assert 'tls="on"' in text and 'tls.permittedPeer=["orchestrator"]' in text
    for setting in ('queue.type="LinkedList"', 'queue.filename="autocode-forward"',
                    'queue.maxDiskSpace="1024m"', 'queue.saveOnShutdown="on"',
                    'queue.checkpointInterval="1"', 'action.resumeRetryCount="-1"',
                    f'tls.myCert="{log_forwarding.TLS_CERT}"'):
        assert setting in text
    plain = log_forwarding.forward_config(HostSettings(WORKER), "10.0.1.1", "orchestrator",
                                          tls=False)
    assert "tls" not in plain.replace("tls.", "").split("omrelp")[1].split("queue")[0]


def test_tcp_forwarding_compresses_each_line_in_octet_counted_frames_over_tls():
    data = dict(WORKER, log_forwarding_protocol="tcp")
    text = log_forwarding.forward_config(HostSettings(data), "10.0.1.1", "orchestrator", tls=True)
    assert "omrelp" not in text and 'type="omfwd"' in text
    for setting in ('protocol="tcp"', 'TCP_Framing="octet-counted"',
                    'compression.mode="single"', f'zipLevel="{log_forwarding.ZIP_LEVEL}"',
                    'StreamDriver="gtls"', 'StreamDriverAuthMode="x509/name"',
                    'StreamDriverPermittedPeers="orchestrator"',
                    f'StreamDriver.CertFile="{log_forwarding.TLS_CERT}"',
                    'queue.saveOnShutdown="on"', 'action.resumeRetryCount="-1"'):
        assert setting in text, setting
    plain = log_forwarding.forward_config(HostSettings(data), "10.0.1.1", "orchestrator", tls=False)
    assert "StreamDriver" not in plain and 'compression.mode="single"' in plain
    receiver = log_forwarding.receive_config(
        HostSettings(dict(ORCH, log_forwarding_protocol="tcp")), tls=True,
        peers=["worker2", "worker1"])
    assert "imrelp" not in receiver and 'input(type="imtcp" port="2514"' in receiver
    assert 'streamDriver.authMode="x509/name"' in receiver
    assert 'permittedPeer=["worker1", "worker2"]' in receiver
    assert 'lookup("autocode_workers", $fromhost-ip)' in receiver
    tcp, relp = LogForwarding.from_data(data), LogForwarding.from_data(WORKER)
    assert tcp.packages(tls=True) == ["rsyslog", "rsyslog-gnutls", "logrotate"]
    assert tcp.packages(tls=False) == ["rsyslog", "logrotate"]
    assert relp.packages(tls=True) == ["rsyslog", "rsyslog-relp", "logrotate"]


def test_receiver_files_lines_by_the_senders_address_from_the_inventory():
    text = log_forwarding.receive_config(HostSettings(ORCH), tls=True, peers=["worker2", "worker1"])
    assert 'tls.authMode="name" tls.permittedPeer=["worker1", "worker2"]' in text
    assert 'lookup("autocode_workers", $fromhost-ip)' in text
    assert f'string="{ROOT}/logs/workers/%$.worker%/worker.log"' in text
    assert "%hostname%" not in text.lower()  # never by what the sender claims
    assert 'tls.myCert="' in text
    assert 2514 in components.management_ports(ORCH)  # the uplink: management only
    table = json.loads(log_forwarding.worker_table({"10.0.1.12": "worker2",
                                                    "10.0.1.11": "worker1"}))
    assert table == {"version": 1, "nomatch": "", "type": "string", "table": [
        {"index": "10.0.1.11", "value": "worker1"}, {"index": "10.0.1.12", "value": "worker2"}]}


def test_logrotate_on_the_orchestrator_and_for_the_audit_log():
    text = render("log_forwarding/logrotate.j2", logs_dir=f"{ROOT}/logs/workers", keep=30)
    assert f"{ROOT}/logs/workers/*/worker.log" in text and "rotate 30" in text
    assert "/usr/lib/rsyslog/rsyslog-rotate" in text
    audit = render("vault/logrotate-audit.j2", audit_log="/x/audit.log", unit="openbao.service",
                   user="vault", keep=30)
    assert "--signal=HUP openbao.service" in audit and "create 0600 vault vault" in audit


def test_workers_may_reach_the_relp_port_and_never_elasticsearch():
    data = {**WORKER, "worker_runner": "systemd"}
    assert 2514 in components.worker_ports(data)
    assert 9200 not in components.worker_ports(data)
    local = orch(elasticsearch_mode="local", elasticsearch_allowed_networks=["192.0.2.0/24"])
    # Model serving's Ray ports are private too (loopback only), beside Elasticsearch's.
    assert components.private_ports(local)[9200] == ["192.0.2.0/24"]
    assert 9200 not in components.private_ports(orch(elasticsearch_mode="external",
                                                     elasticsearch_url="http://x:9200"))
    rules = render("network/orchestrator.rules.v4.j2", worker_network="10.0.1.0/24",
                   proxy_port=8080, dns_port=53, worker_tcp_ports=[53, 2514, 8080],
                   management_tcp_ports=[8200], management_networks=["192.0.2.9/32"],
                   private_tcp_ports=components.private_ports(local))
    lines = rules.splitlines()
    accept = "-A INPUT -s 192.0.2.0/24 -p tcp -m tcp --dport 9200 -j ACCEPT"
    drop = "-A INPUT ! -i lo -p tcp -m tcp --dport 9200 -j DROP"
    assert accept in lines and drop in lines and lines.index(accept) < lines.index(drop)
    # Workers are judged first, by their own chain, which ends in DROP.
    assert lines.index("-A INPUT -s 10.0.1.0/24 ! -i lo -j AUTOCODE-FROM-WORKERS") < \
        lines.index(accept)


# -- bad input --------------------------------------------------------------------------


def problems_for(**overrides) -> list[str]:
    return components.check_host("orchestrator", "orchestrator",
                                 {**ORCH, "ssh_hostname": "10.0.0.10",
                                  "worker_network": "10.0.1.0/24", **overrides})


@pytest.mark.parametrize(("overrides", "field"), [
    ({"log_retention_days": 0}, "log_retention_days"),
    ({"log_retention_days": "30"}, "log_retention_days"),
    ({"traffic_retention_days": True}, "traffic_retention_days"),
    ({"elasticsearch_mode": "cloud"}, "elasticsearch_mode"),
    ({"elasticsearch_mode": "external"}, "elasticsearch_url"),
    ({"elasticsearch_mode": "external", "elasticsearch_url": "logs.example.com:9200"},
     "elasticsearch_url"),
    ({"elasticsearch_allowed_networks": ["10.0.0.0/33"]}, "elasticsearch_allowed_networks"),
    ({"elasticsearch_heap_mb": 64 * 1024}, "elasticsearch_heap_mb"),
    ({"elasticsearch_snapshot_keep": 0}, "elasticsearch_snapshot_keep"),
    ({"elastic_apt_key_fingerprint": "46095ACC"}, "elastic_apt_key_fingerprint"),
    ({"filebeat_enabled": "yes"}, "filebeat_enabled"),
    ({"log_forwarding_queue_max_mb": 1}, "log_forwarding_queue_max_mb"),
    ({"log_forwarding_protocol": "udp"}, "log_forwarding_protocol"),
    ({"log_forwarding_protocol": None}, "log_forwarding_protocol"),
])
def test_bad_settings_are_refused_naming_the_field(overrides, field):
    found = problems_for(**overrides)
    assert any(f" {field}:" in p or f"{field}:" in p.split(" ", 2)[-1] for p in found), found


def test_a_credentials_file_others_can_read_is_refused_and_never_echoed(tmp_path):
    key = base64.b64encode(b"id:very-secret-value").decode()
    creds = tmp_path / "es.key"
    creds.write_text(key)
    creds.chmod(0o644)
    found = problems_for(elasticsearch_mode="external", elasticsearch_url="https://es:9200",
                         elasticsearch_credentials_file=str(creds))
    assert any("elasticsearch_credentials_file" in p and "chmod 600" in p for p in found)
    creds.chmod(0o600)
    assert problems_for(elasticsearch_mode="external", elasticsearch_url="https://es:9200",
                        elasticsearch_credentials_file=str(creds)) == []
    creds.write_text("not a key at all")
    found = problems_for(elasticsearch_mode="external", elasticsearch_url="https://es:9200",
                         elasticsearch_credentials_file=str(creds))
    assert any("elasticsearch_credentials_file" in p for p in found)
    assert not any("not a key at all" in p or key in p for p in found)


def test_defaults_pass_their_own_checks():
    assert problems_for() == []


def test_pyinfra_refuses_bad_logging_settings_before_connecting(tmp_path):
    """The real CLI: a retention of 0, a retention given as a string, a URL without a
    scheme and a credentials file others can read, all in one report, no host contacted."""
    import subprocess
    import sys
    from pathlib import Path

    key = tmp_path / "id_ed25519"
    key.write_text("only its existence is checked\n")
    creds = tmp_path / "es.key"
    creds.write_text(base64.b64encode(b"id:secret").decode())
    creds.chmod(0o644)
    doc = {
        "ssh": {"user": "root", "key": str(key)},
        "data": {"worker_network": "10.99.1.0/24", "log_retention_days": 0,
                 "traffic_retention_days": "90", "elasticsearch_mode": "external",
                 "elasticsearch_url": "es.example.com:9200",
                 "elasticsearch_credentials_file": str(creds)},
        "orchestrator": {"name": "orchestrator", "address": "10.99.0.10",
                         "worker_address": "10.99.1.1"},
        "workers": [{"name": "worker1", "address": "10.99.1.11", "agent_type": "aider"}],
    }
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(doc))
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("pyinfra")), "inventory.py", "deploy.py", "-y"],
        cwd=repo, capture_output=True, text=True, timeout=120,
        env={**os.environ, "AUTOCODE_INVENTORY": str(path)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    for field in ("log_retention_days", "traffic_retention_days", "elasticsearch_url",
                  "elasticsearch_credentials_file"):
        assert f"{field}:" in proc.stderr, field
    assert "No host was contacted" in proc.stderr
    assert "Connecting" not in proc.stdout + proc.stderr
