"""Secrets on real hosts: OpenBao on the orchestrator as the deploy leaves it, read by the
agents with the runtime's own SecretManager over TLS verified against the platform CA;
restarts, a backup restored into wiped storage, and planted secrets searched for everywhere
an apply could leak them."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from infra.inventory_file import group_defaults
from infra.vault import KeysFile, wait_until_answering
from infra.vault_api import VaultAPI
from settings.vault import WORKER_ENV, WORKER_TOKEN
from tasks import platform_ca
from testing.deploy import DeployFailed, Pyinfra, changed_hosts
from testing.figures import record

pytestmark = pytest.mark.lab
AGENT = group_defaults("workers")["service_user"]
DATA_ROOT = group_defaults("orchestrator")["data_root"]
UNIT = "openbao.service"
READY_OP = "Secrets server | Vault initialised and unsealed"
TOKEN_OP = "Vault access for the agent | Vault token for the agent"
W1_ONLY = "projects/worker1-only"
RUN = uuid.uuid4().hex[:8]
CARD = {"number": f"PLANTED-CARD-{RUN}", "cvv": f"PLANTED-CVV-{RUN}"}
TON = {"seed": f"PLANTED-TON-SEED-{RUN}"}
W1_SECRET = {"key": f"PLANTED-W1-ONLY-{RUN}"}


def executed_changes(result: dict) -> dict[str, set[str]]:
    """What an apply actually changed (pyinfra re-reads each operation's state when it
    runs it), as opposed to what its plan guessed."""
    return {op["name"]: set(op["success"]) for op in result["results"]["operations"]
            if op["success"]}


def agent_reads(ssh, worker: str, code: str, token: str | None = None) -> dict:
    """Run Python as the agent account on a worker, with the deploy's vault.env, and
    return its JSON output. `token`, when given, goes in on stdin, never a command line."""
    program = ("import json, sys\n"
               "from autocode.secrets import SecretManager, SecretAccessError\n"
               "token = sys.stdin.read().strip() or None\n"
               "m = SecretManager(token=token)\n"
               "def attempt(f):\n"
               "    try:\n"
               "        return f()\n"
               "    except SecretAccessError as e:\n"
               "        return {'error': e.reason}\n"
               f"{code}\n")
    command = (f"set -a; . {WORKER_ENV}; set +a; runuser -u {AGENT} -- env "
               f"VAULT_ADDR=\"$VAULT_ADDR\" VAULT_CACERT=\"$VAULT_CACERT\" "
               f"/opt/autocode/venv/bin/python -c {shlex.quote(program)} 2>/dev/null")
    proc = ssh(worker, command, input=token or "")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def site(lab, tmp_path_factory) -> dict:
    """The lab's inventory with a seed file planted and a worker1-only secret path, as a
    user would write it; the keys file stays the lab's."""
    folder = tmp_path_factory.mktemp("site")
    seed = folder / "seed.yaml"
    seed.write_text(yaml.safe_dump({"payments/card_primary": CARD, "crypto/TON": TON,
                                    W1_ONLY: W1_SECRET}))
    os.chmod(seed, 0o600)
    doc = yaml.safe_load(lab.inventory_file.read_text())
    doc["data"]["vault_keys_file"] = str(lab.inventory_file.with_name(
        f"{lab.inventory_file.stem}.vault-keys.json"))
    doc["orchestrator"].setdefault("data", {})["vault_seed_file"] = str(seed)
    doc["workers"][0].setdefault("data", {})["secret_paths"] = [
        *group_defaults("workers")["secret_paths"], W1_ONLY]
    inventory = folder / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(doc, sort_keys=False))
    return {"inventory": inventory, "seed": seed, "doc": doc,
            "keys": Path(doc["data"]["vault_keys_file"])}


@pytest.fixture(scope="module")
def deploy(lab, site):
    yield Pyinfra(site["inventory"])
    # Back to the lab's own inventory for the tests after these (worker1's policy).
    Pyinfra(lab.inventory_file).run()


@pytest.fixture(scope="module")
def admin(lab, ssh, deploy, site) -> VaultAPI:
    """The site converged; the deploy's admin client, from the keys file."""
    result, seconds = deploy.run()
    record("vault: converge with seed and worker1 policy", f"{seconds:.1f} s")
    assert result["results"]["totals"]["error"] == 0
    keys = KeysFile(site["keys"])
    ca = ssh(lab.orchestrator.name, f"cat {platform_ca.CA_CERT}").stdout
    return VaultAPI(f"https://{lab.orchestrator.ssh_addr}:8200", ca, keys.load()["admin_token"])


def test_converged_initialised_unsealed_and_a_reapply_changes_nothing(lab, ssh, deploy,
                                                                       admin, site):
    status = admin.seal_status()
    assert status["initialized"] and not status["sealed"] and status["storage_type"] == "raft"
    assert os.stat(site["keys"]).st_mode & 0o777 == 0o600
    doc = json.loads(site["keys"].read_text())
    assert doc["root_token"] is None and len(doc["unseal_keys_b64"]) == 5
    audit = f"{DATA_ROOT}/logs/orchestrator/vault/audit.log"
    before = int(ssh(lab.orchestrator.name, f"wc -l < {audit}").stdout)
    result, seconds = deploy.run()
    record("vault: no-change re-apply", f"{seconds:.1f} s")
    assert changed_hosts(result) == {}
    after = int(ssh(lab.orchestrator.name, f"wc -l < {audit}").stdout)
    # Each audited call is two lines (request, response); seal-status reads are unaudited.
    record("vault: authenticated API calls in a no-change re-apply", str((after - before) // 2))
    # The cluster port answers nobody but the host itself; the API, the workers and the
    # control machine (this test reads it), not the rest of the uplink.
    listeners = ssh(lab.orchestrator.name, "ss -Htln").stdout
    assert "127.0.0.1:8201" in listeners and "0.0.0.0:8201" not in listeners
    probe = "timeout 5 bash -c 'echo > /dev/tcp/{}/{}' 2>/dev/null && echo open || echo closed"
    orch_up, orch_w = lab.orchestrator.ssh_addr, lab.orchestrator.worker_addr
    assert ssh(lab.internet.name, probe.format(orch_up, 8200)).stdout.strip() == "closed"
    assert ssh(lab.internet.name, probe.format(orch_up, 22)).stdout.strip() == "open"
    assert ssh(lab.workers[0].name, probe.format(orch_w, 8200)).stdout.strip() == "open"
    assert ssh(lab.workers[0].name, probe.format(orch_w, 8201)).stdout.strip() == "closed"
    for worker in lab.workers:
        mode = ssh(worker.name, f"stat -c '%U %a' {WORKER_TOKEN}").stdout.split()
        assert mode == [AGENT, "600"], worker.name


def test_each_agent_reads_exactly_its_own_paths(lab, ssh, admin):
    w1, w2 = lab.workers[0].name, lab.workers[1].name
    got = agent_reads(ssh, w1, "print(json.dumps({'card': attempt(m.get_payment_card), "
                      "'ton': attempt(m.get_crypto_wallet), 'btc': attempt(lambda: "
                      "m.get_crypto_wallet('BTC')), 'w1': attempt(lambda: m._read("
                      f"{W1_ONLY!r})), 'token': m.check_token()['policies']}}))")
    assert got["card"] == CARD and got["ton"] == TON and got["w1"] == W1_SECRET
    assert got["btc"] == {"error": "forbidden"}
    assert got["token"] == [f"autocode-worker-{w1}"]
    got = agent_reads(ssh, w2, "print(json.dumps({'card': attempt(m.get_payment_card), "
                      f"'w1': attempt(lambda: m._read({W1_ONLY!r}))}}))")
    assert got == {"card": CARD, "w1": {"error": "forbidden"}}
    # worker1's token, taken to worker2, is refused there: it is bound to worker1's address.
    stolen = ssh(w1, f"cat {WORKER_TOKEN}").stdout.strip()
    got = agent_reads(ssh, w2, "print(json.dumps(attempt(m.get_payment_card)))", token=stolen)
    assert got == {"error": "forbidden"}
    # The other agent account cannot read the token file.
    assert ssh(w1, f"runuser -u nobody -- cat {WORKER_TOKEN}", check=False).returncode != 0


def test_a_revoked_token_is_reissued_and_the_old_one_dies(lab, ssh, deploy, admin):
    w3 = lab.workers[2].name
    record_file = "/var/lib/autocode-deploy/vault/agent-token.json"
    old = json.loads(ssh(w3, f"cat {record_file}").stdout)["accessor"]
    admin.put("auth/token/revoke-accessor", {"accessor": old})
    assert agent_reads(ssh, w3, "print(json.dumps(attempt(m.get_payment_card)))") == \
        {"error": "forbidden"}
    result, _ = deploy.run()
    assert executed_changes(result) == {TOKEN_OP: {w3}}
    assert agent_reads(ssh, w3, "print(json.dumps(attempt(m.get_payment_card)))") == CARD
    result, _ = deploy.run()
    assert changed_hosts(result) == {}


def test_restart_seals_dry_run_reports_it_and_an_apply_unseals(lab, ssh, deploy, admin):
    orch, w1 = lab.orchestrator.name, lab.workers[0].name
    ssh(orch, f"systemctl restart {UNIT}")
    assert wait_until_answering(admin, 30)["sealed"]
    assert agent_reads(ssh, w1, "print(json.dumps(attempt(m.get_payment_card)))") == \
        {"error": "sealed"}
    plan, _ = deploy.run("--dry")
    assert changed_hosts(plan).get(READY_OP) == {orch}
    assert admin.seal_status()["sealed"], "a dry run unsealed Vault"
    result, _ = deploy.run()
    assert executed_changes(result) == {READY_OP: {orch}}
    assert agent_reads(ssh, w1, "print(json.dumps(attempt(m.get_payment_card)))") == CARD
    result, _ = deploy.run()
    assert changed_hosts(result) == {}


def test_kill_9_is_restarted_by_systemd_sealed_and_the_apply_unseals(lab, ssh, deploy,
                                                                       admin):
    orch = lab.orchestrator.name
    pid = ssh(orch, f"systemctl show -P MainPID {UNIT}").stdout.strip()
    ssh(orch, f"kill -9 {pid}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = ssh(orch, f"systemctl show -P MainPID {UNIT}").stdout.strip()
        if now not in ("0", pid) and ssh(orch, f"systemctl is-active {UNIT}",
                                         check=False).stdout.strip() == "active":
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"{UNIT} was not restarted after kill -9")
    assert wait_until_answering(admin, 30)["sealed"]
    result, _ = deploy.run()
    assert executed_changes(result) == {READY_OP: {orch}}
    assert agent_reads(ssh, lab.workers[0].name,
                       "print(json.dumps(attempt(m.get_payment_card)))") == CARD


def test_planted_secrets_appear_nowhere(lab, ssh, deploy, admin, site):
    """An apply that unseals, writes the seed and issues a token, at -vv, while every
    host's and the control machine's process command lines are sampled. Then the planted
    values, every token and the unseal keys are searched for in pyinfra's output, the
    hosts' journals, everything under logs/ on every host, and the samples."""
    orch, w4 = lab.orchestrator.name, lab.workers[3].name
    fresh = {"number": f"PLANTED-CARD-2-{RUN}", "cvv": f"PLANTED-CVV-2-{RUN}"}
    site["seed"].write_text(yaml.safe_dump({"payments/card_primary": fresh, "crypto/TON": TON,
                                            W1_ONLY: W1_SECRET}))
    old = json.loads(ssh(w4, "cat /var/lib/autocode-deploy/vault/agent-token.json").stdout)
    admin.put("auth/token/revoke-accessor", {"accessor": old["accessor"]})
    ssh(orch, f"systemctl restart {UNIT}")
    hosts = [m.name for m in lab.deploy_hosts]
    sampler = ("rm -f /run/cmdlines; end=$(($(date +%s) + 240)); "
               "while [ $(date +%s) -lt $end ] && [ ! -e /run/stop-sampling ]; do "
               "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done "
               ">> /run/cmdlines 2>/dev/null; sleep 0.05; done")
    for host in hosts:
        ssh(host, "rm -f /run/stop-sampling")
        subprocess.Popen(lab.ssh_argv(host, f"nohup sh -c {shlex.quote(sampler)} "
                                            ">/dev/null 2>&1 &"))
    local_samples: list[str] = []
    done = threading.Event()

    def sample_locally():
        while not done.is_set():
            local_samples.append(subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                                text=True).stdout)
            time.sleep(0.05)

    thread = threading.Thread(target=sample_locally)
    thread.start()
    proc = subprocess.run([str(Path(deploy_cli()).resolve()), "inventory.py", "deploy.py",
                           "-y", "-vv"], cwd=str(Path(__file__).resolve().parents[2]),
                          env=deploy.env, capture_output=True, text=True, timeout=900)
    done.set()
    thread.join()
    assert proc.returncode == 0, proc.stderr[-3000:]
    for host in hosts:
        ssh(host, "touch /run/stop-sampling")
    assert agent_reads(ssh, lab.workers[0].name,
                       "print(json.dumps(attempt(m.get_payment_card)))") == fresh
    keys = json.loads(site["keys"].read_text())
    tokens = [ssh(w.name, f"cat {WORKER_TOKEN}").stdout.strip() for w in lab.workers]
    tokens.append(ssh(orch, "cat /etc/autocode/vault/backup-token").stdout.strip())
    planted = {**{f"seed value {k}": v for k, v in {**fresh, **TON, **W1_SECRET}.items()},
               **{f"token of host {i}": t for i, t in enumerate(tokens)},
               "admin token": keys["admin_token"],
               **{f"unseal key {i}": k for i, k in enumerate(keys["unseal_keys_b64"])}}
    places = {"pyinfra -vv output": proc.stdout + proc.stderr,
              "control machine command lines": "\n".join(local_samples)}
    for host in hosts:
        places[f"{host} command lines"] = ssh(host, "cat /run/cmdlines").stdout
        places[f"{host} journal"] = ssh(host, "journalctl -b -o cat --no-pager").stdout
        places[f"{host} logs/"] = ssh(host, f"find {DATA_ROOT}/logs -type f -print0 | "
                                      "xargs -0 -r cat; true").stdout
    # Workers log nothing under logs/ yet; every other place must have been read.
    assert [name for name, text in places.items() if not text and
            not (name.endswith(" logs/") and name.startswith("worker"))] == []
    samples = sum(text.count("\n") for name, text in places.items() if "command" in name)
    record("vault leak search: places searched", str(len(places)))
    record("vault leak search: command lines sampled", str(samples))
    leaks = [(what, where) for what, value in planted.items()
             for where, text in places.items() if value in text]
    assert leaks == []
    # The search can find what it looks for: the unseal really took keys, the seed was
    # written, tokens issued (and the audit log under logs/ has their HMACs only).
    assert "Vault token for the agent" in proc.stderr and "Vault: seed values" in proc.stderr
    assert "hmac-sha256:" in places[f"{orch} logs/"]


def deploy_cli() -> str:
    from testing.deploy import PYINFRA
    return PYINFRA


def test_backup_restores_into_wiped_storage(lab, ssh, deploy, admin):
    orch, w1 = lab.orchestrator.name, lab.workers[0].name
    backups = f"{DATA_ROOT}/backups/vault"
    ssh(orch, "systemctl start autocode-vault-backup.service")
    snapshot = ssh(orch, f"ls -1 {backups}/vault-*.snap | tail -n 1").stdout.strip()
    assert ssh(orch, f"stat -c '%U %a' {snapshot}").stdout.split() == ["vault", "600"]
    expected = agent_reads(ssh, w1, "print(json.dumps(attempt(m.get_payment_card)))")
    ssh(orch, f"systemctl stop {UNIT} && rm -rf {DATA_ROOT}/vault-data/* && "
              f"systemctl reset-failed {UNIT}; systemctl start {UNIT}")
    time.sleep(1)
    # The deploy never initialises a fresh store over keys it holds: it stops, changes
    # nothing, and says how to restore.
    with pytest.raises(DeployFailed, match="storage was wiped"):
        deploy.run("--dry")
    assert admin.seal_status()["initialized"] is False
    started = time.monotonic()
    out = ssh(orch, f"autocode-vault-restore {snapshot}").stdout
    assert "snapshot restored" in out
    result, _ = deploy.run()
    record("vault: restore + unsealing apply", f"{time.monotonic() - started:.1f} s")
    assert executed_changes(result).get(READY_OP) == {orch}
    assert agent_reads(ssh, w1, "print(json.dumps(attempt(m.get_payment_card)))") == expected
    kept = ssh(orch, f"ls -d {DATA_ROOT}/vault-data.before-restore-*").stdout.split()
    assert kept, "the wiped storage folder was not kept aside"
    result, _ = deploy.run()
    assert changed_hosts(result) == {}


def test_bad_input_is_refused_before_any_host_is_touched(lab, ssh, site, tmp_path):
    seed = tmp_path / "seed.yaml"
    seed.write_text(yaml.safe_dump({"payments/card_primary": CARD}))
    os.chmod(seed, 0o644)
    doc = json.loads(json.dumps(site["doc"]))
    doc["orchestrator"]["data"]["vault_seed_file"] = str(seed)
    doc["workers"][1].setdefault("data", {})["secret_paths"] = ["crypto/../../sys/raw"]
    doc["data"]["secrets_server"] = "hashicorp"
    inventory = tmp_path / "bad.yaml"
    inventory.write_text(yaml.safe_dump(doc))
    since = int(ssh(lab.orchestrator.name, "date +%s").stdout) + 1
    time.sleep(1.2)  # the session that read the clock is before `since`
    with pytest.raises(DeployFailed) as caught:
        Pyinfra(inventory).run("--dry")
    text = str(caught.value)
    for field in ("vault_seed_file", "secret_paths", "secrets_server"):
        assert f"{field}:" in text, field
    assert CARD["number"] not in text
    sessions = ssh(lab.orchestrator.name, f"journalctl -u ssh --since @{since} -o cat "
                   "--no-pager | grep -c 'Accepted publickey' || true").stdout.strip()
    assert sessions == "1", "the deploy connected to a host despite bad input"


def test_hashicorp_vault_is_planned_not_installed(lab, ssh):
    """secrets_server: vault is the production default on Ubuntu; HashiCorp's repository is
    not reachable here, so it is exercised by a dry plan against the lab's hosts only."""
    plan, _ = Pyinfra(lab.inventory_file).run("--dry", "--data", "secrets_server=vault")
    changes = changed_hosts(plan)
    orch = {lab.orchestrator.name}
    for op in ("HashiCorp's signing key", "HashiCorp's apt repository", "Vault 1.18.3",
               "Unit vault.service", "Vault server configuration"):
        assert changes.get(f"Secrets server | {op}") == orch, op
    assert ssh(lab.orchestrator.name, "test -e /etc/apt/sources.list.d/hashicorp.sources",
               check=False).returncode != 0, "a dry plan wrote to the host"


def test_flipping_the_seal_of_an_initialised_server_is_refused(lab, ssh, deploy, admin):
    config = "/etc/autocode/vault/server.hcl"
    before = ssh(lab.orchestrator.name, f"sha256sum {config}").stdout
    with pytest.raises(DeployFailed, match="needs a seal migration"):
        deploy.run("--data", "vault_unattended_unseal=true")
    assert ssh(lab.orchestrator.name, f"sha256sum {config}").stdout == before
    assert not admin.seal_status()["sealed"]
