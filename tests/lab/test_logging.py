"""The logging pipeline on real hosts.

- Real: rsyslog on the workers forwarding the worker runtime's JSON log lines over RELP
  (mutual TLS with the platform CA) to the orchestrator's rsyslog, which files them by the
  sender's address: latency, an outage of the receiver counted line by line, a receiver
  hung then killed, a worker claiming another's name; then the same over
  `log_forwarding_protocol: tcp` (zlib-compressed lines): bytes on the wire against RELP's,
  a client without a worker's certificate refused, the outage, and the lines a hung
  receiver takes lost (the price of no acknowledgements, measured).
- `elasticsearch_mode: external` against the Elasticsearch double (testing/
  elasticsearch_double.py) run on the orchestrator as a lab fixture: Elastic's builds cannot
  be had here. The deploy's index management and the traffic shipper are real; the cluster
  is the double.
- `elasticsearch_mode: local` and Filebeat: a `--dry` plan only, for the same reason.
"""

from __future__ import annotations

import json
import shlex
import time
import uuid
from pathlib import Path

import pytest

from infra.elasticsearch import ElasticsearchAPI
from infra.inventory_file import group_defaults
from tasks import elasticsearch, log_forwarding, platform_ca
from testing import deploy
from testing.deploy import Pyinfra, changed_hosts
from testing.figures import record
from testing.worker_logs import LOGS, log_as_worker, received, wait_for

pytestmark = pytest.mark.lab
WORKERS = group_defaults("workers")
DATA_ROOT = WORKERS["data_root"]
AGENT = WORKERS["service_user"]
RUN = uuid.uuid4().hex[:8]
REPO = Path(__file__).resolve().parents[2]
FIXTURE_UNIT = "lab-fixture-es-double.service"
FIXTURE_DIR = "/opt/lab-fixture-es-double"
ES_PORT = 9200
# Index-management paths (the shipper's _bulk and the double's own pages excluded).
MANAGED = ("/_ilm/", "/_index_template/", "/_data_stream/", "/_snapshot/", "/_slm/")


def site_inventory(lab, folder: Path, **data) -> Path:
    return deploy.site_inventory(lab.inventory_file, folder, **data)


def test_forwarding_is_configured_tls_on_the_worker_port_only(lab, ssh, converged):
    orch = lab.orchestrator.name
    conf = ssh("worker1", f"cat {log_forwarding.FORWARD_CONF}").stdout
    assert 'tls="on"' in conf and "queue.saveOnShutdown" in conf
    listening = ssh(orch, "ss -Htln").stdout
    assert f":{WORKERS['log_forwarding_port']} " in listening
    table = json.loads(ssh(orch, f"cat {log_forwarding.WORKER_TABLE}").stdout)
    assert {e["value"] for e in table["table"]} == {f"worker{n}" for n in range(1, 5)}


def test_a_worker_line_reaches_its_folder_on_the_orchestrator_within_5_s(lab, ssh, converged):
    orch = lab.orchestrator.name
    marker = f"latency-{RUN}"
    log_as_worker(ssh, "worker2", [marker])
    started = time.monotonic()
    found = wait_for(lambda: received(ssh, orch, "worker2", marker), timeout=5)
    seconds = time.monotonic() - started
    assert found == [marker], "not under logs/workers/worker2 within 5 s"
    record("log forwarding: worker2 line on the orchestrator", f"{seconds:.2f} s")
    # Only worker2's folder has it.
    assert not received(ssh, orch, "worker1", marker)


def outage(ssh, orch: str, marker: str, seconds: float, label: str) -> None:
    """The receiver stopped for `seconds` while worker2 logs 300 lines in two bursts:
    nothing arrives meanwhile, every line arrives afterwards, exactly once."""
    lines = [f"{marker}-{n:04d}" for n in range(300)]
    ssh(orch, "systemctl stop syslog.socket rsyslog.service")
    stopped = time.monotonic()
    try:
        log_as_worker(ssh, "worker2", lines[:150])
        time.sleep(seconds / 3)
        log_as_worker(ssh, "worker2", lines[150:])
        time.sleep(max(0.0, seconds - (time.monotonic() - stopped)))
        assert received(ssh, orch, "worker2", marker) == []
    finally:
        ssh(orch, "systemctl start rsyslog.service")
    back = time.monotonic()
    wait_for(lambda: len(set(received(ssh, orch, "worker2", marker))) >= len(lines),
             timeout=60, interval=0.5)
    after = time.monotonic() - back
    got = received(ssh, orch, "worker2", marker)
    doubled = len(got) - len(set(got))
    record(f"log forwarding ({label}): {seconds:.0f} s outage, lines sent/arrived/doubled",
           f"{len(lines)}/{len(set(got))}/{doubled} (all in {after:.1f} s after the "
           "receiver's restart)")
    assert sorted(set(got)) == lines and doubled == 0


def test_lines_queue_while_the_receiver_is_stopped_and_arrive_once(lab, ssh, converged):
    """The receiver stopped for a minute while worker2 logs. (Not covered, and not met:
    worker2's own rsyslog restarted during such an outage loses the first lines it sent
    after the orchestrator went away, which librelp holds in memory only; measured: 2 of 300
    lost, 2 doubled. README, "Logs".)"""
    outage(ssh, lab.orchestrator.name, f"outage-{RUN}", 60, "relp")


def hang_then_kill(ssh, orch: str, marker: str) -> tuple[list[str], list[str]]:
    """worker2 logs 100 lines, 100 more while the orchestrator's rsyslog is hung (SIGSTOP:
    its kernel still takes them into the socket), which is then killed (SIGKILL) and
    started again, and 100 more: the lines sent, and those filed under worker2."""
    lines = [f"{marker}-{n:04d}" for n in range(300)]
    log_as_worker(ssh, "worker2", lines[:100])
    assert wait_for(lambda: len(received(ssh, orch, "worker2", marker)) >= 100, timeout=10)
    pid = ssh(orch, "systemctl show -p MainPID --value rsyslog.service").stdout.strip()
    ssh(orch, f"kill -STOP {pid}")
    try:
        log_as_worker(ssh, "worker2", lines[100:200])
        time.sleep(3)
    finally:
        ssh(orch, f"kill -KILL {pid}; systemctl start rsyslog.service")
    log_as_worker(ssh, "worker2", lines[200:])
    last = lines[-1]
    wait_for(lambda: last in received(ssh, orch, "worker2", marker), timeout=60, interval=0.5)
    time.sleep(2)  # anything sent again after the last line
    return lines, received(ssh, orch, "worker2", marker)


def test_a_receiver_that_hangs_then_dies_loses_no_line(lab, ssh, converged):
    """RELP's acknowledgements: what the hung receiver took but never wrote is sent again
    (and what it wrote but had not acknowledged too: at least once, so doubles are
    counted, not refused)."""
    lines, got = hang_then_kill(ssh, lab.orchestrator.name, f"hang-{RUN}")
    doubled = len(got) - len(set(got))
    record("log forwarding (relp): receiver hung 3 s then killed, lines sent/arrived/doubled",
           f"{len(lines)}/{len(set(got))}/{doubled}")
    assert sorted(set(got)) == lines


def test_a_worker_cannot_file_lines_under_another_workers_name(lab, ssh, converged):
    """worker3 names itself worker2 (its hostname and the line's worker_id): the line is
    filed under worker3, by its address."""
    orch = lab.orchestrator.name
    marker = f"spoof-{RUN}"
    ssh("worker3", "hostname worker2 && systemctl restart rsyslog.service")
    try:
        log_as_worker(ssh, "worker3", [marker], worker_id="worker2")
        assert wait_for(lambda: received(ssh, orch, "worker3", marker), timeout=10)
        assert received(ssh, orch, "worker2", marker) == []
    finally:
        ssh("worker3", "hostname worker3 && systemctl restart rsyslog.service")


def bytes_to_receiver(ssh, lab) -> int:
    """Payload bytes worker2 has had acknowledged on its connection to the log receiver
    (the kernel's count, TLS included; 0 before there is a connection)."""
    port = WORKERS["log_forwarding_port"]
    out = ssh("worker2", f"ss -Htin state established dst {lab.orchestrator.worker_addr}:{port}"
              ).stdout
    counts = [int(part.split(":")[1]) for part in out.split() if part.startswith("bytes_acked:")]
    return sum(counts)


def wire_bytes(ssh, lab, marker: str) -> int:
    """Bytes on the wire for the same 300 lines as the worker runtime writes them."""
    orch = lab.orchestrator.name
    log_as_worker(ssh, "worker2", [f"{marker}-warm-up"])  # a connection to measure on
    assert wait_for(lambda: received(ssh, orch, "worker2", f"{marker}-warm-up"), timeout=10)
    before = bytes_to_receiver(ssh, lab)
    lines = [f"{marker}-{n:04d}-task-step-finished-ok" for n in range(300)]
    log_as_worker(ssh, "worker2", lines)
    assert wait_for(lambda: len(received(ssh, orch, "worker2", f"{marker}-0")) >= 300,
                    timeout=20, interval=0.3)
    time.sleep(0.5)  # the last acknowledgements
    return bytes_to_receiver(ssh, lab) - before


@pytest.fixture(scope="module")
def relp_bytes(lab, ssh, converged):
    return wire_bytes(ssh, lab, f"relp-bytes-{RUN}")


@pytest.fixture(scope="module")
def tcp_forwarding(lab, relp_bytes, tmp_path_factory):
    """The lab applied with `log_forwarding_protocol: tcp`; the lab's own inventory again
    afterwards."""
    inventory = site_inventory(lab, tmp_path_factory.mktemp("tcp"),
                               log_forwarding_protocol="tcp")
    result, seconds = Pyinfra(inventory).run()
    record("log forwarding: re-apply switching to tcp", f"{seconds:.1f} s")
    yield result
    Pyinfra(lab.inventory_file).run()


def test_tcp_forwarding_sends_fewer_bytes_for_the_same_lines(lab, ssh, relp_bytes,
                                                              tcp_forwarding):
    assert tcp_forwarding["results"]["totals"]["error"] == 0
    conf = ssh("worker2", f"cat {log_forwarding.FORWARD_CONF}").stdout
    assert 'type="omfwd"' in conf and 'StreamDriver="gtls"' in conf
    tcp_bytes = wire_bytes(ssh, lab, f"tcp-bytes-{RUN}")
    record("log forwarding: bytes on the wire for 300 worker log lines, relp vs tcp",
           f"{relp_bytes} vs {tcp_bytes} ({tcp_bytes / relp_bytes:.2f} of relp's)")
    assert 0 < tcp_bytes < relp_bytes


def test_tcp_forwarding_latency_and_sender_check(lab, ssh, tcp_forwarding):
    orch = lab.orchestrator.name
    marker = f"tcp-latency-{RUN}"
    log_as_worker(ssh, "worker2", [marker])
    started = time.monotonic()
    assert wait_for(lambda: received(ssh, orch, "worker2", marker), timeout=5) == [marker]
    record("log forwarding (tcp): worker2 line on the orchestrator",
           f"{time.monotonic() - started:.2f} s")
    # A client without a worker's certificate is refused: nothing filed, anywhere; the same
    # line sent with worker1's certificate is filed (under worker1).
    port = WORKERS["log_forwarding_port"]
    client = (f"timeout 5 openssl s_client -quiet -connect "
              f"{lab.orchestrator.worker_addr}:{port} -CAfile {platform_ca.TRUSTED_CA}")
    for who, options in (("anonymous", ""), ("worker1", f" -cert {log_forwarding.TLS_CERT} "
                                                         f"-key {log_forwarding.TLS_KEY}")):
        probe = f"<134>1 - worker1 autocode-worker - - - probe-{who}-{RUN}"
        ssh("worker1", f"echo {shlex.quote(probe)} | {client}{options}", check=False)

    def filed(who: str) -> list[str]:
        return ssh(orch, f"grep -rl probe-{who}-{RUN} {LOGS}/workers || true").stdout.split()

    assert wait_for(lambda: filed("worker1"), timeout=5) == [f"{LOGS}/workers/worker1/worker.log"]
    assert filed("anonymous") == []


def test_tcp_forwarding_outage_loses_and_doubles_nothing(lab, ssh, tcp_forwarding):
    outage(ssh, lab.orchestrator.name, f"tcp-outage-{RUN}", 30, "tcp")


def test_tcp_forwarding_loses_only_what_a_hung_receiver_took(lab, ssh, tcp_forwarding):
    """The price of compression (no acknowledgements): the lines the hung receiver's kernel
    took are lost with it; every line before and after arrives, none twice."""
    lines, got = hang_then_kill(ssh, lab.orchestrator.name, f"tcp-hang-{RUN}")
    lost = sorted(set(lines) - set(got))
    record("log forwarding (tcp): receiver hung 3 s then killed, lines sent/arrived/doubled",
           f"{len(lines)}/{len(set(got))}/{len(got) - len(set(got))} (lost: "
           f"{lost[0][-4:] + '..' + lost[-1][-4:] if lost else 'none'})")
    assert set(lines[:100]) <= set(got) and set(lines[200:]) <= set(got)
    assert len(got) == len(set(got))


def test_dry_plan_with_a_local_node_and_filebeat(lab, tmp_path):
    inventory = site_inventory(lab, tmp_path, elasticsearch_mode="local",
                               filebeat_enabled=True)
    result, seconds = Pyinfra(inventory).run("--dry")
    record("logging: --dry with a local node and Filebeat", f"{seconds:.1f} s")
    planned = {op["name"] for op in result["plan"] if op["hosts_with_change"]}
    for name in ("Elasticsearch | Elasticsearch 8.19.0", "Elasticsearch | elasticsearch.yml",
                 "Filebeat | Filebeat 8.19.0", "Filebeat | filebeat.yml",
                 "Network: orchestrator as gateway | IPv4 ruleset file"):
        assert name in planned, sorted(planned)


@pytest.fixture(scope="module")
def es_double(lab, ssh):
    """The Elasticsearch double run on the orchestrator as a lab fixture (it stands in for a
    cluster the site already has), on port 9200 of every address."""
    orch = lab.orchestrator.name
    ssh(orch, f"mkdir -p {FIXTURE_DIR}/testing && : > {FIXTURE_DIR}/testing/__init__.py")
    for name in ("elasticsearch_double.py", "elasticsearch_double_process.py"):
        ssh(orch, f"cat > {FIXTURE_DIR}/testing/{name}",
            input=(REPO / "testing" / name).read_text())
    ssh(orch, f"systemctl stop {FIXTURE_UNIT} 2>/dev/null; systemctl reset-failed "
        f"{FIXTURE_UNIT} 2>/dev/null; systemd-run --unit={FIXTURE_UNIT} "
        f"--working-directory={FIXTURE_DIR} python3 -m testing.elasticsearch_double_process "
        f"{ES_PORT} 0.0.0.0 1800", check=True)
    api = ElasticsearchAPI(f"http://{lab.orchestrator.ssh_addr}:{ES_PORT}")
    assert wait_for(api.info, timeout=15, interval=0.3), "the double did not start"
    yield api
    ssh(orch, f"systemctl stop {FIXTURE_UNIT}", check=False)


@pytest.fixture(scope="module")
def external(lab, es_double, tmp_path_factory):
    inventory = site_inventory(lab, tmp_path_factory.mktemp("external"),
                               elasticsearch_mode="external", filebeat_enabled=False,
                               elasticsearch_url=es_double.url)
    yield Pyinfra(inventory)
    Pyinfra(lab.inventory_file).run()  # the lab's own inventory again for later tests


def managed_calls(api: ElasticsearchAPI) -> list[tuple[str, str]]:
    _, payload = api.request("GET", "/_double/requests")
    return [(m, p) for m, p in payload["requests"] if p.startswith(MANAGED)]


def test_external_cluster_gets_policies_templates_streams_and_snapshots(lab, ssh, es_double,
                                                                        external):
    result, seconds = external.run()
    record("logging: apply with elasticsearch_mode external", f"{seconds:.1f} s")
    assert result["results"]["totals"]["error"] == 0
    api = es_double
    for stream, days in (("autocode-logs", 30), ("autocode-traffic", 90)):
        policy = api.get(f"/_ilm/policy/{stream}")[stream]["policy"]
        assert policy["phases"]["delete"]["min_age"] == f"{days}d"
        assert policy["phases"]["hot"]["actions"]["rollover"]["max_age"] == "1d"
        template = api.get(f"/_index_template/{stream}")["index_templates"][0]
        assert template["index_template"]["template"]["settings"]["index"]["lifecycle"] == {
            "name": stream}
        assert api.get(f"/_data_stream/{stream}")["data_streams"][0]["ilm_policy"] == stream
    repo = api.get(f"/_snapshot/{elasticsearch.SNAPSHOT_REPOSITORY}")
    assert repo[elasticsearch.SNAPSHOT_REPOSITORY]["settings"]["location"] == \
        f"{DATA_ROOT}/backups/elasticsearch"
    slm = api.get(f"/_slm/policy/{elasticsearch.SLM_POLICY}")[elasticsearch.SLM_POLICY]
    assert slm["policy"]["retention"]["max_count"] == 7

    before = len(managed_calls(api))
    again, seconds = external.run()
    calls = managed_calls(api)[before:]
    record("logging: no-change re-apply (external)",
           f"{seconds:.1f} s, {len(calls)} API calls, "
           f"{sum(1 for m, _ in calls if m != 'GET')} writes")
    assert changed_hosts(again) == {}
    assert calls and all(m == "GET" for m, _ in calls), calls


def test_traffic_records_arrive_in_the_data_stream(lab, ssh, es_double, external):
    url = f"http://{lab.internet.uplink_addr}/logging-{RUN}"
    ssh("worker1", f"runuser -u {AGENT} -- curl -s -o /dev/null -m 10 {url}", check=False)

    def shipped():
        _, payload = es_double.request("GET", "/_double/docs/autocode-traffic")
        return [d for d in payload["docs"] if d.get("url") == url]

    docs = wait_for(shipped, timeout=20, interval=0.5)
    assert docs and docs[0]["worker_id"] == "worker1"
    _, streams = es_double.request("GET", "/_data_stream/autocode-traffic")
    assert streams["data_streams"][0]["template"] == "autocode-traffic"


def test_workers_cannot_reach_elasticsearchs_port(lab, ssh, es_double):
    target = f"http://{lab.orchestrator.worker_addr}:{ES_PORT}/"
    # Control: it answers on the orchestrator's worker-side address.
    assert "You Know, for Search" in ssh(lab.orchestrator.name, f"curl -s -m 5 {target}").stdout
    for worker in ("worker1", "worker3"):
        assert ssh(worker, f"curl -s -m 3 {target}", check=False).returncode != 0


def lab_vault_admin(lab, ssh):
    """The deploy's own Vault client, from the lab's keys file: what an operator with the
    deploy's token can do (here: store the cluster's API key)."""
    from infra.vault import KeysFile
    from infra.vault_api import VaultAPI

    keys = KeysFile(lab.inventory_file.with_name(f"{lab.inventory_file.stem}.vault-keys.json"))
    ca = ssh(lab.orchestrator.name, f"cat {platform_ca.CA_CERT}").stdout
    return VaultAPI(f"https://{lab.orchestrator.ssh_addr}:8200", ca, keys.load()["admin_token"])


def new_api_key() -> str:
    import base64

    return base64.b64encode(f"{uuid.uuid4().hex[:12]}:{uuid.uuid4().hex}".encode()).decode()


def test_the_clusters_api_key_from_vault_reaches_the_deploy_and_the_shipper(
        lab, ssh, es_double, tmp_path_factory):
    """An operator keeps the cluster's API key in the platform's Vault; the double then
    wants it on every request, as a cluster with security on does. Then the key rotated."""
    orch, path = lab.orchestrator.name, f"elasticsearch/lab-{RUN}"
    admin = lab_vault_admin(lab, ssh)
    first = new_api_key()
    admin.put(f"secret/data/{path}", {"data": {"api_key": first}})
    es_double.request("PUT", "/_double/api_keys", {"keys": [first]})
    site = Pyinfra(site_inventory(lab, tmp_path_factory.mktemp("vault-key"),
                                  elasticsearch_mode="external", filebeat_enabled=False,
                                  elasticsearch_url=es_double.url,
                                  elasticsearch_credentials_vault_path=path))

    def key_file() -> str:
        return ssh(orch, f"stat -c '%a %U %G' {elasticsearch.API_KEY_FILE} && "
                   f"cat {elasticsearch.API_KEY_FILE}").stdout

    def shipped(tag: str) -> list[dict]:
        url = f"http://{lab.internet.uplink_addr}/vault-key-{tag}-{RUN}"
        ssh("worker1", f"runuser -u {AGENT} -- curl -s -o /dev/null -m 10 {url}", check=False)

        def arrived():
            _, payload = es_double.request("GET", "/_double/docs/autocode-traffic")
            return [d for d in payload["docs"] if d.get("url") == url]
        return wait_for(arrived, timeout=30, interval=0.5)

    try:
        result, seconds = site.run()
        record("logging: apply with the cluster's API key from Vault", f"{seconds:.1f} s")
        assert result["results"]["totals"]["error"] == 0
        assert key_file() == f"640 root autocode-proxy\n{first}\n"
        assert first not in json.dumps(result)  # the key never in the deploy's report
        assert shipped("first"), "the shipper's records did not pass the cluster's key"
        again, _ = site.run()
        assert changed_hosts(again) == {}

        # Rotation: a second key made and stored in Vault, the first still valid meanwhile
        # (Elasticsearch's own rotation order); the re-apply changes exactly the key file
        # and restarts the shipper, which then needs only the second.
        second = new_api_key()
        admin.put(f"secret/data/{path}", {"data": {"api_key": second}})
        es_double.request("PUT", "/_double/api_keys", {"keys": [first, second]})
        rotated, seconds = site.run()
        record("logging: re-apply after the key was rotated in Vault", f"{seconds:.1f} s, "
               f"changed: {sorted(changed_hosts(rotated))}")
        assert changed_hosts(rotated) == {
            "Elasticsearch | Elasticsearch API key for the orchestrator's clients": {orch},
            "mitmproxy | autocode-traffic-shipper.service": {orch}}
        es_double.request("PUT", "/_double/api_keys", {"keys": [second]})
        _, before = es_double.request("GET", "/_double/api_keys")
        assert shipped("second"), "the shipper did not take the rotated key"
        _, after = es_double.request("GET", "/_double/api_keys")
        assert after["unauthenticated"] == before["unauthenticated"]
        assert key_file().endswith(f"\n{second}\n")
    finally:
        es_double.request("PUT", "/_double/api_keys", {"keys": []})
        admin.delete(f"secret/metadata/{path}", ok=(403, 404))
        Pyinfra(lab.inventory_file).run()
