"""The Nomad component (tasks/nomad.py, infra/nomad.py): its rendered configuration and job
parsed with python-hcl2, its checks of bad input, and its plan/register and ACL logic
against the Nomad double (testing/nomad_double.py; tests marked `double`) and, where
NOMAD_ADDR and NOMAD_TOKEN name one, against a real Nomad (`real_service`). Nomad's
binaries are not obtainable here: nothing in this file starts a real Nomad."""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from infra import hashicorp
from infra import nomad as nomad_state
from infra.inventory_file import group_defaults
from infra.nomad_api import NomadAPI, NomadAPIError
from infra.settings import HostSettings
from roles import CATALOGUE as components
from roles import orchestrator as orchestrator_role
from roles import worker as worker_role
from settings.nomad import Nomad
from settings.vault import Vault
from tasks import nomad, platform_ca
from testing.nomad_double import NomadDouble, parse_hcl

PLANTED = "PLANTED-NOMAD-TOKEN-5e2b"


def _data(group: str, **overrides):
    # The component's defaults whether or not the roles list it yet.
    return {**group_defaults(group), **nomad.COMPONENT.settings.defaults(), "worker_network":
            "10.0.1.0/24", "ssh_hostname": "10.0.1.11", **overrides}


@pytest.fixture
def listed(monkeypatch):
    """The roles with the Nomad component in them, as the integrated roles have it."""
    for role in (orchestrator_role, worker_role):
        if nomad not in role.COMPONENTS:
            monkeypatch.setattr(role, "COMPONENTS", [*role.COMPONENTS, nomad])


def _blocks(doc, name):
    """[(label, body)] of a labelled block kind in parsed HCL."""
    return [(label, body) for block in doc.get(name) or [] for label, body in block.items()]


# -- the job --------------------------------------------------------------------------------


def test_the_job_runs_one_coding_agent_per_worker_as_the_seed_says():
    data = _data("orchestrator")
    job_id, job = _blocks(parse_hcl(nomad.worker_job(HostSettings(data), 4, "10.0.1.1")), "job")[0]
    assert job_id == "autocode-worker"
    assert job["datacenters"] == ["dc1"] and job["type"] == "service"
    [(group_name, group)] = _blocks(job, "group")
    assert group_name == "agent" and group["count"] == 4
    assert {"operator": "distinct_hosts", "value": "true"} in group["constraint"]
    [(task_name, task)] = _blocks(group, "task")
    assert task_name == "coding-agent"
    assert task["driver"] == "exec" and task["user"] == "autocode"
    config = task["config"][0]
    assert config["command"] == "/opt/autocode/venv/bin/autocode-worker"
    args = config["args"]
    assert args[:3] == ["serve", "--config", "/etc/autocode/worker.yaml"]
    assert args[args.index("--agent-type") + 1] == "${meta.agent_type}"
    env = task["env"][0]
    assert env == {"DAILY_BUDGET": "${meta.daily_budget_usd}",
                   "PROJECT_ID": "${meta.project_id}", "ORCHESTRATOR_URL": "https://10.0.1.1:7444"}
    assert task["resources"][0] == {"cores": 4, "memory": 2048}
    # The data tree comes in as the client's host volume, mounted where it is on the host.
    [(volume, spec)] = _blocks(group, "volume")
    assert spec == {"type": "host", "source": nomad.DATA_VOLUME, "read_only": False}
    assert task["volume_mount"][0] == {"volume": volume, "destination": "/mnt/data/autocode"}
    assert group["restart"][0]["mode"] == "delay" and group["reschedule"][0]["unlimited"]


def test_the_job_follows_the_inventory_and_the_settings():
    data = _data("orchestrator", nomad_task_cores=2, nomad_task_memory_mb=4096,
                 install_dir="/srv/autocode", service_user="agent")
    _, job = _blocks(parse_hcl(nomad.worker_job(HostSettings(data), 2, "10.9.0.1")), "job")[0]
    _, group = _blocks(job, "group")[0]
    _, task = _blocks(group, "task")[0]
    assert group["count"] == 2 and task["user"] == "agent"
    assert task["config"][0]["command"] == "/srv/autocode/venv/bin/autocode-worker"
    assert task["resources"][0] == {"cores": 2, "memory": 4096}
    assert task["env"][0]["ORCHESTRATOR_URL"] == "https://10.9.0.1:7444"


# -- agent configuration --------------------------------------------------------------------


TLS = {"ca": platform_ca.TRUSTED_CA, "cert": "/etc/autocode/nomad/tls/agent.crt",
       "key": "/etc/autocode/nomad/tls/agent.key"}


def test_server_config_one_server_acls_gossip_key_and_tls():
    key = nomad_state.new_gossip_key()
    doc = parse_hcl(nomad.server_config(HostSettings(_data("orchestrator")), "orchestrator",
                                        "10.0.1.1", key, TLS))
    server = doc["server"][0]
    assert server["enabled"] is True and server["bootstrap_expect"] == 1
    assert server["encrypt"] == key and len(base64.b64decode(key)) == 32
    assert doc["acl"][0]["enabled"] is True
    assert doc["client"][0]["enabled"] is False
    assert doc["data_dir"] == "/mnt/data/autocode/nomad"
    assert doc["region"] == "global" and doc["datacenter"] == "dc1"
    assert doc["advertise"][0]["rpc"] == "10.0.1.1:4647"
    # Gossip is between servers only, and there is one.
    assert doc["addresses"][0]["serf"] == "127.0.0.1"
    tls = doc["tls"][0]
    assert (tls["ca_file"], tls["cert_file"], tls["key_file"]) == \
        (TLS["ca"], TLS["cert"], TLS["key"])
    assert tls["http"] is tls["rpc"] is tls["verify_server_hostname"] is True
    assert "tls" not in parse_hcl(nomad.server_config(HostSettings(_data("orchestrator")), "o",
                                                      "10.0.1.1", key, None))


def test_client_config_meta_chroot_env_and_host_volume():
    data = _data("workers", agent_type="aider", daily_budget_usd=25)
    doc = parse_hcl(nomad.client_config(HostSettings(data), "worker3", "10.0.1.1", TLS))
    client = doc["client"][0]
    assert client["enabled"] is True and client["servers"] == ["10.0.1.1:4647"]
    assert client["meta"][0] == {"agent_type": "aider", "worker_id": "worker3",
                                 "daily_budget_usd": "25", "project_id": "autocode"}
    chroot = client["chroot_env"]
    # Nomad's defaults stay (setting the option replaces them), plus the runtime.
    for path in nomad.DEFAULT_CHROOT_ENV + ("/opt/autocode", "/etc/autocode"):
        assert chroot[path] == path, path
    [(name, volume)] = _blocks(client, "host_volume")
    assert name == nomad.DATA_VOLUME
    assert volume == {"path": "/mnt/data/autocode", "read_only": False}
    assert doc["server"][0]["enabled"] is False and doc["acl"][0]["enabled"] is True
    assert doc["tls"][0]["cert_file"] == TLS["cert"]


def test_tls_only_with_the_platform_ca_and_with_the_names_nomad_checks(listed, monkeypatch):
    assert nomad.tls_files(components, "worker")["ca"] == platform_ca.TRUSTED_CA
    assert nomad.tls_names("server", "global")[0] == "server.global.nomad"
    assert nomad.tls_names("client", "eu")[0] == "client.eu.nomad"
    monkeypatch.setattr(worker_role, "COMPONENTS",
                        [c for c in worker_role.COMPONENTS if c is not platform_ca])
    assert nomad.tls_files(components, "worker") is None


# -- settings -------------------------------------------------------------------------------


def _problems(role, **data):
    group = "orchestrator" if role == "orchestrator" else "workers"
    return "\n".join(components.check_host("h", role, _data(group, **data)))


def test_default_settings_pass_and_bad_ones_are_named_with_the_fix():
    assert _problems("orchestrator") == "" and _problems("worker") == ""
    text = _problems("worker", worker_runner="kubernetes")
    assert "'h': worker_runner: 'kubernetes' is not a worker runner; use nomad" in text
    assert "systemd" in text
    for field, value in (("nomad_version", "latest"), ("nomad_version", "1.9"),
                         ("nomad_region", "Global!"), ("nomad_datacenter", ""),
                         ("nomad_task_cores", 0), ("nomad_task_cores", True),
                         ("nomad_task_memory_mb", 64), ("nomad_api_url", "ftp://x"),
                         ("nomad_keys_file", "")):
        text = _problems("orchestrator", **{field: value})
        assert text.startswith(f"orchestrator 'h': {field}: "), (field, value, text)
    assert "must differ" in _problems("orchestrator", nomad_rpc_port=4646)


def test_the_check_runs_in_the_one_validation_pass(listed):
    text = "\n".join(components.check_host("w1", "worker", _data(
        "workers", worker_runner="k8s", nomad_http_port=70000)))
    assert "worker 'w1': worker_runner:" in text and "worker 'w1': nomad_http_port:" in text


def test_hashicorp_key_fingerprint_one_setting_with_its_earlier_name():
    def problems(**data):
        return components.check_host("h", "orchestrator", _data("orchestrator", **data))

    assert problems() == []
    assert "hashicorp_apt_key_fingerprint:" in problems(hashicorp_apt_key_fingerprint="abc")[0]
    other = "0" * 40
    assert problems(vault_apt_key_fingerprint=other) == []
    assert Vault.from_data({"vault_apt_key_fingerprint": other,
                            "hashicorp_apt_key_fingerprint": "1" * 40}
                           ).apt_key_fingerprint == other
    assert "set only hashicorp_apt_key_fingerprint" in problems(
        vault_apt_key_fingerprint=other, hashicorp_apt_key_fingerprint="1" * 40)[0]


# -- systemd runner: nothing at all ---------------------------------------------------------


def test_ports_only_when_nomad_runs_the_workers(listed):
    data = _data("workers")
    assert {4646, 4647} <= set(components.worker_ports(data))
    assert {4646, 4647} <= set(components.management_ports(data))
    assert 4648 not in components.worker_ports(data) + components.management_ports(data)
    systemd = _data("workers", worker_runner="systemd")
    assert not {4646, 4647} & set(components.worker_ports(systemd))
    assert not {4646, 4647} & set(components.management_ports(systemd))


class _Data(dict):
    def __getattr__(self, name):
        return self[name]

    def dict(self):
        return dict(self)


class _Planned(Exception):
    pass


@pytest.mark.parametrize("role", ["orchestrator", "worker"])
def test_systemd_runner_plans_no_operation(role, monkeypatch):
    """With worker_runner systemd the deploy functions return before anything else; with
    nomad the first thing they reach is planned (here: stopped by a sentinel)."""

    def planned(*args, **kwargs):
        raise _Planned

    for name in ("system_accounts", "directory", "file_content", "systemd_unit",
                 "signed_certificate", "certificate_signed_on_host", "_install", "_session",
                 "_orchestrator_host", "tls_files"):
        monkeypatch.setattr(nomad, name, planned)
    monkeypatch.setattr(nomad.hashicorp, "apt_repository", planned)
    deploy_function = getattr(nomad, role).__wrapped__
    group = "orchestrator" if role == "orchestrator" else "workers"
    def host(**data):  # a fresh run's host: settings are read once per run and stage
        return type("Host", (), {"data": _Data(_data(group, **data)), "name": "h",
                                 "groups": [group], "state": SimpleNamespace(current_stage=1)})

    monkeypatch.setattr(nomad, "host", host(worker_runner="systemd"))
    assert deploy_function(components) is None
    monkeypatch.setattr(nomad, "host", host())
    with pytest.raises(_Planned):
        deploy_function(components)


# -- the keys file --------------------------------------------------------------------------


def test_keys_file_defaults_beside_the_inventory(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOCODE_INVENTORY", str(tmp_path / "site.yaml"))
    assert Nomad.from_data({}).keys_file() == tmp_path / "site.nomad-keys.json"
    assert Nomad.from_data({"nomad_keys_file": "~/n.json"}).keys_file() == \
        Path("~/n.json").expanduser()


def test_keys_file_is_0600_and_refused_when_open(monkeypatch, tmp_path):
    keys = nomad_state.KeysFile(tmp_path / "control" / "k.json")
    keys.save({"gossip_key": "x"})
    assert os.stat(keys.path).st_mode & 0o777 == 0o600
    os.chmod(keys.path, 0o644)
    with pytest.raises(nomad_state.NomadSetupError, match="nomad_keys_file: .*chmod 600"):
        keys.load()
    monkeypatch.setenv("AUTOCODE_INVENTORY", str(tmp_path / "control" / "k.yaml"))
    assert "nomad_keys_file: " in _problems("orchestrator", nomad_keys_file=str(keys.path))


def test_the_gossip_key_is_made_once_and_kept_before_use(tmp_path):
    keys = nomad_state.KeysFile(tmp_path / "k.json")
    run = nomad_state.Session(url="http://127.0.0.1:9", keys=keys, orchestrator=None,
                              ca_path=None)
    key = run.gossip_key()
    assert run.gossip_key() == key and not keys.exists()  # planning writes nothing
    assert key not in repr(run)
    logged = []
    nomad_state._keep_gossip_key(None, type("H", (), {"log": logged.append}), run)
    assert keys.load()["gossip_key"] == key and key not in logged[0]
    again = nomad_state.Session(url=run.url, keys=keys, orchestrator=None, ca_path=None)
    assert again.gossip_key() == key


# -- against the Nomad double and a real Nomad ----------------------------------------------


class Backend:
    def __init__(self, api: NomadAPI, double: NomadDouble | None):
        self.api = api
        self.double = double
        self.job_id = f"autocode-test-{uuid.uuid4().hex[:8]}"

    def hcl(self, count: int = 2) -> str:
        text = nomad.worker_job(HostSettings(_data("orchestrator")), count, "10.0.1.1")
        return text.replace(f'job "{nomad.JOB_ID}"', f'job "{self.job_id}"', 1)

    def job_index(self) -> int | None:
        job = self.api.job(self.job_id)
        return job["JobModifyIndex"] if job else None


@pytest.fixture(params=[
    pytest.param("double", id="nomad_double", marks=pytest.mark.double),
    pytest.param("real", id="real_nomad", marks=pytest.mark.real_service),
])
def backend(request, tmp_path):
    if request.param == "real":
        if not (os.environ.get("NOMAD_ADDR") and os.environ.get("NOMAD_TOKEN")):
            pytest.skip("no real Nomad: set NOMAD_ADDR and NOMAD_TOKEN (a management token; "
                        "NOMAD_CACERT for TLS) to run this twin against one")
        ca = os.environ.get("NOMAD_CACERT")
        api = NomadAPI(os.environ["NOMAD_ADDR"], open(ca).read() if ca else None,
                       os.environ["NOMAD_TOKEN"])
        found = Backend(api, None)
        yield found
        # Stop and purge the test's job: nothing of it stays in a cluster someone uses.
        import nomad.api as client_api

        client_api.Job(address=api.url, token=api.token, verify=True, session=api.session
                       ).deregister_job(found.job_id, purge=True)
        return
    double = NomadDouble().start()
    keys = nomad_state.KeysFile(tmp_path / "keys.json")
    token = nomad_state.bootstrap_acl(NomadAPI(double.url), keys)
    yield Backend(NomadAPI(double.url, token=token), double)
    double.stop()


def test_first_apply_registers_and_a_second_registers_nothing(backend):
    first = nomad_state.converge_job(backend.api, backend.hcl())
    assert first is not None and first.change == "Added" and first.index == 0
    index = backend.job_index()
    assert index
    before = NomadAPI.calls
    assert nomad_state.converge_job(backend.api, backend.hcl()) is None
    assert NomadAPI.calls - before == 2  # parse and plan, no register
    assert backend.job_index() == index
    if backend.double:
        assert backend.double.registers == 1


def test_a_changed_job_registers_once(backend):
    nomad_state.converge_job(backend.api, backend.hcl(count=2))
    index = backend.job_index()
    changed = nomad_state.converge_job(backend.api, backend.hcl(count=3))
    assert changed is not None and changed.change == "Edited" and changed.index == index
    assert backend.job_index() > index
    assert nomad_state.converge_job(backend.api, backend.hcl(count=3)) is None
    assert backend.api.job(backend.job_id)["TaskGroups"][0]["Count"] == 3
    if backend.double:
        assert backend.double.registers == 2


def test_a_job_changed_since_its_plan_is_not_overwritten(backend):
    nomad_state.converge_job(backend.api, backend.hcl(count=2))
    planned = nomad_state.plan_job(backend.api, backend.hcl(count=3))
    # Someone else registers another version between this plan and its register.
    nomad_state.converge_job(backend.api, backend.hcl(count=4))
    with pytest.raises(nomad_state.NomadSetupError) as caught:
        nomad_state.register_job(backend.api, planned)
    text = str(caught.value)
    assert f"job {backend.job_id} changed in Nomad after this apply planned it" in text
    assert f"JobModifyIndex {planned.index}" in text and "apply again" in text
    assert backend.api.job(backend.job_id)["TaskGroups"][0]["Count"] == 4


def test_a_new_job_planned_while_another_apply_creates_it(backend):
    planned = nomad_state.plan_job(backend.api, backend.hcl())
    assert planned.index == 0
    nomad_state.converge_job(backend.api, backend.hcl(count=3))
    with pytest.raises(nomad_state.NomadSetupError, match="job already exists"):
        nomad_state.register_job(backend.api, planned)


def test_a_lost_keys_file_meets_a_bootstrapped_cluster_with_the_fix(backend, tmp_path):
    """Nomad answers a second bootstrap 400 "ACL bootstrap already done": the deploy says
    what to do, and changes nothing."""
    empty = nomad_state.KeysFile(tmp_path / "lost.json")
    with pytest.raises(nomad_state.NomadSetupError) as caught:
        nomad_state.bootstrap_acl(NomadAPI(backend.api.url, backend.api.ca_pem), empty)
    text = str(caught.value)
    assert "bootstrapped already" in text and str(empty.path) in text
    assert "acl-bootstrap-reset" in text and backend.api.token not in text
    assert not empty.exists()


def test_a_kept_token_is_reused_without_a_bootstrap(backend, tmp_path):
    keys = nomad_state.KeysFile(tmp_path / "kept.json")
    keys.save({"acl_bootstrap": {"secret_id": backend.api.token}})
    before = NomadAPI.calls
    assert nomad_state.bootstrap_acl(NomadAPI(backend.api.url, backend.api.ca_pem),
                                     keys) == backend.api.token
    assert NomadAPI.calls - before == 1  # token/self only
    if backend.double:
        assert backend.double.bootstraps == 1


def test_errors_name_the_call_never_the_token(backend):
    with pytest.raises(NomadAPIError) as caught:
        backend.api.with_token(PLANTED).parse(backend.hcl())
    text = str(caught.value)
    assert "POST jobs/parse" in text and "HTTP 403" in text and PLANTED not in text


@pytest.mark.double
def test_acl_bootstrap_once_into_a_private_keys_file(tmp_path):
    double = NomadDouble().start()
    try:
        keys = nomad_state.KeysFile(tmp_path / "control" / "site.nomad-keys.json")
        token = nomad_state.bootstrap_acl(NomadAPI(double.url), keys)
        assert os.stat(keys.path).st_mode & 0o777 == 0o600
        assert keys.load()["acl_bootstrap"]["secret_id"] == token
        assert NomadAPI(double.url, token=token).token_self()["Type"] == "management"
        # The second run: the kept token, no second bootstrap.
        assert nomad_state.bootstrap_acl(NomadAPI(double.url), keys) == token
        assert double.bootstraps == 1
        assert [p for _, p in double.requests].count("/v1/acl/bootstrap") == 1
        # A token Nomad no longer knows and a bootstrapped cluster: said, nothing changed.
        keys.save({"acl_bootstrap": {"secret_id": "stale"}})
        with pytest.raises(nomad_state.NomadSetupError, match="does not accept"):
            nomad_state.bootstrap_acl(NomadAPI(double.url), keys)
        assert keys.load() == {"acl_bootstrap": {"secret_id": "stale"}}
    finally:
        double.stop()


@pytest.mark.double
def test_the_double_refuses_job_calls_without_the_management_token():
    double = NomadDouble().start()
    try:
        with pytest.raises(NomadAPIError) as caught:
            NomadAPI(double.url).job("autocode-worker")
        assert caught.value.status == 403
        assert NomadAPI(double.url).leader() == "127.0.0.1:4647"
    finally:
        double.stop()


# -- shared pieces: HashiCorp's repository, a certificate signed on another host -----------


def test_hashicorp_repository_is_declared_once_per_host(monkeypatch):
    """Vault and Nomad both ask for it on a host with both: one keyring fetch, one sources
    file, and the second caller gets the first one's operation."""
    from pyinfra.facts.server import LinuxDistribution

    calls = []

    class Host:
        name = "orchestrator"
        state = type("State", (), {})()

        @staticmethod
        def get_fact(cls, **kwargs):
            if cls is LinuxDistribution:
                return {"release_meta": {"VERSION_CODENAME": "bookworm"}}
            return {}  # no keyring yet

    from infra import apt_repository

    # The signed-repository helper HashiCorp's repository is declared through.
    monkeypatch.setattr(apt_repository, "host", Host)
    monkeypatch.setattr(apt_repository.server, "shell",
                        lambda **kw: calls.append(("shell", kw)))
    monkeypatch.setattr(apt_repository, "file_content",
                        lambda **kw: calls.append(("file", kw)) or object())
    key = hashicorp.KEY_FINGERPRINT
    first, second = hashicorp.apt_repository(key), hashicorp.apt_repository(key)
    assert first is second and [kind for kind, _ in calls] == ["shell", "file"]
    assert hashicorp.KEY_FINGERPRINT in " ".join(calls[0][1]["commands"])
    sources = calls[1][1]
    assert sources["path"] == hashicorp.SOURCES
    assert "Suites: bookworm\n" in sources["text"]
    assert f"Signed-By: {hashicorp.KEYRING}\n" in sources["text"]


class _LocalHost:
    """A host whose commands run here: enough for the signing callback's shell steps."""

    def __init__(self, name):
        self.name = name

    def run_shell_command(self, command):
        import subprocess

        done = subprocess.run(command, shell=True, capture_output=True, text=True)
        return done.returncode == 0, type("Out", (), {"stdout_lines":
                                                      done.stdout.splitlines()})

    def put_file(self, source, path):
        with open(path, "w") as out:
            out.write(source.read())
        return True


def test_a_client_certificate_is_signed_on_the_ca_host_from_a_request(monkeypatch, tmp_path):
    """The worker makes its key and a request; the orchestrator signs the request; only
    the certificate comes back, and it verifies against the CA with Nomad's client name."""
    import subprocess

    from infra import operations

    ca_cert, ca_key = tmp_path / "platform-ca.crt", tmp_path / "platform-ca.key"
    subprocess.run(f"openssl ecparam -name prime256v1 -genkey -noout -out {ca_key} && "
                   f"openssl req -x509 -new -key {ca_key} -subj /CN=test-ca -days 2 "
                   f"-out {ca_cert}", shell=True, check=True, capture_output=True)
    monkeypatch.setattr(operations, "STAGING", str(tmp_path / "staging"))
    worker, signer = _LocalHost("worker1"), _LocalHost("orchestrator")
    state = type("State", (), {"inventory": type("Inv", (), {
        "get_host": staticmethod(lambda name: signer)})()})()
    key, csr, cert = tmp_path / "agent.key", tmp_path / "agent.csr", tmp_path / "agent.crt"
    sans = [operations._san(n) for n in nomad.tls_names("client", "global")]
    ok, _ = worker.run_shell_command(operations._new_key_and_request(
        str(key), str(csr), "client.global.nomad", sans))
    assert ok
    operations._sign_on_host(state, worker, "orchestrator", str(ca_cert), str(ca_key),
                             str(csr), str(cert), 30)
    check = subprocess.run(f"openssl verify -CAfile {ca_cert} {cert} && openssl x509 -noout "
                           f"-ext subjectAltName -in {cert}", shell=True, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stderr
    assert "DNS:client.global.nomad" in check.stdout and "IP Address:127.0.0.1" in check.stdout
    assert not list((tmp_path / "staging").iterdir())  # the request is not left there
    with pytest.raises(Exception, match="could not read the signing request"):
        operations._sign_on_host(state, worker, "orchestrator", str(ca_cert), str(ca_key),
                                 str(tmp_path / "none.csr"), str(cert), 30)
