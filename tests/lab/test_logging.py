"""The logging pipeline on real hosts.

- Real: rsyslog on the workers forwarding the worker runtime's JSON log lines over RELP
  (mutual TLS with the platform CA) to the orchestrator's rsyslog, which files them by the
  sender's address: latency, an outage of the receiver (with the worker's rsyslog restarted
  in the middle of it) counted line by line, a worker claiming another's name.
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
from tasks import elasticsearch, log_forwarding
from testing import deploy
from testing.deploy import Pyinfra, changed_hosts
from testing.figures import record

pytestmark = pytest.mark.lab
WORKERS = group_defaults("workers")
DATA_ROOT = WORKERS["data_root"]
LOGS = f"{DATA_ROOT}/logs"
VENV = f"{WORKERS['install_dir']}/venv"
AGENT = WORKERS["service_user"]
RUN = uuid.uuid4().hex[:8]
REPO = Path(__file__).resolve().parents[2]
FIXTURE_UNIT = "lab-fixture-es-double.service"
FIXTURE_DIR = "/opt/lab-fixture-es-double"
ES_PORT = 9200
# Index-management paths (the shipper's _bulk and the double's own pages excluded).
MANAGED = ("/_ilm/", "/_index_template/", "/_data_stream/", "/_snapshot/", "/_slm/")


def log_as_worker(ssh, host: str, messages: list[str], worker_id: str | None = None) -> None:
    """Lines logged by the worker runtime's own logging set-up (autocode/logging.py), as
    the agent account, into the file the worker service writes."""
    code = ("import sys\n"
            "from loguru import logger\n"
            "from autocode.logging import configure_logging\n"
            f"configure_logging('worker', {LOGS!r}, worker_id={worker_id or host!r}, "
            "folder='workers', console=False)\n"
            "for line in sys.stdin.read().split():\n"
            "    logger.info(line)\n")
    ssh(host, f"cd / && runuser -u {AGENT} -- {VENV}/bin/python -c {shlex.quote(code)}",
        input="\n".join(messages) + "\n")


def received(ssh, orchestrator: str, folder: str, marker: str) -> list[str]:
    """The messages containing `marker` the orchestrator filed under `folder`, each line
    parsed as the JSON the worker wrote."""
    proc = ssh(orchestrator, f"cat {LOGS}/workers/{shlex.quote(folder)}/worker.log 2>/dev/null "
               f"| grep -F {shlex.quote(marker)} || true")
    return [json.loads(line)["record"]["message"] for line in proc.stdout.splitlines()
            if line.strip()]


def site_inventory(lab, folder: Path, **data) -> Path:
    return deploy.site_inventory(lab.inventory_file, folder, **data)


def wait_for(predicate, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


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


def test_lines_queue_while_the_receiver_is_stopped_and_arrive_once(lab, ssh, converged):
    """The receiver stopped for a minute while worker2 logs: nothing arrives meanwhile, and
    every line arrives afterwards, exactly once. (Not covered, and not met: worker2's own
    rsyslog restarted during such an outage loses the lines in flight, as rsyslog documents
    for RELP; measured once: 2 of 300 lost, 2 doubled. README, "Logs".)"""
    orch = lab.orchestrator.name
    marker = f"outage-{RUN}"
    lines = [f"{marker}-{n:04d}" for n in range(300)]
    ssh(orch, "systemctl stop syslog.socket rsyslog.service")
    stopped = time.monotonic()
    try:
        log_as_worker(ssh, "worker2", lines[:150])
        time.sleep(20)
        log_as_worker(ssh, "worker2", lines[150:])
        time.sleep(max(0.0, 60 - (time.monotonic() - stopped)))
        assert received(ssh, orch, "worker2", marker) == []
    finally:
        ssh(orch, "systemctl start rsyslog.service")
    back = time.monotonic()
    wait_for(lambda: len(set(received(ssh, orch, "worker2", marker))) >= len(lines),
             timeout=60, interval=0.5)
    seconds = time.monotonic() - back
    got = received(ssh, orch, "worker2", marker)
    doubled = len(got) - len(set(got))
    record("log forwarding: outage lines sent/arrived/doubled",
           f"{len(lines)}/{len(set(got))}/{doubled} (all in {seconds:.1f} s after the "
           "receiver's restart)")
    assert sorted(set(got)) == lines and doubled == 0


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
