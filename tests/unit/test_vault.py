"""The deploy's Vault lifecycle (infra/vault.py) against a real OpenBao server started from
the deploy's own configuration template (testing/openbao.py), and the secrets component's
checks of bad input. No double: OpenBao is the server the lab deploys."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from infra import vault
from infra.errors import InventoryError
from infra.inventory_file import group_defaults, load
from infra.vault_api import VaultAPI, VaultAPIError
from roles import CATALOGUE as components
from settings.vault import Vault
from testing.openbao import OpenBao

PLANTED = "PLANTED-SEED-VALUE-6f1c2a"
PLAN = vault.InitPlan(shares=5, threshold=3)


def test_init_keeps_keys_only_in_a_0600_file_and_revokes_the_root_token(bao, tmp_path):
    keys = vault.KeysFile(tmp_path / "control" / "keys.json")
    vault.initialise(bao.api(), keys, PLAN)
    assert os.stat(keys.path).st_mode & 0o777 == 0o600
    doc = keys.load()
    assert len(doc["unseal_keys_b64"]) == 5 and doc["threshold"] == 3
    root = doc["root_token"]
    assert bao.api().seal_status()["sealed"]
    assert vault.unseal(bao.api(), doc) is True
    vault.wait_until_active(bao.api())
    vault.bootstrap_admin(bao.api(), keys)
    doc = keys.load()
    assert doc["root_token"] is None and doc["admin_token"].startswith("s.")
    with pytest.raises(VaultAPIError) as caught:
        bao.api(root).get("auth/token/lookup-self")
    assert caught.value.status == 403
    # The admin token carries the deploy's policy only, and cannot do what root could.
    admin = bao.api(doc["admin_token"])
    assert admin.get("auth/token/lookup-self")["data"]["policies"] == [vault.ADMIN_POLICY]
    with pytest.raises(VaultAPIError) as caught:
        admin.put("sys/seal")
    assert caught.value.status == 403
    assert not list(keys.path.parent.glob("*.new"))


def test_a_wiped_server_is_never_initialised_over_existing_keys(bao, tmp_path):
    keys = vault.KeysFile(tmp_path / "keys.json")
    keys.save({"unseal_keys_b64": ["earlier"], "threshold": 1})
    with pytest.raises(vault.VaultSetupError, match="storage was wiped"):
        vault.initialise(bao.api(), keys, PLAN)
    assert bao.api().seal_status()["initialized"] is False
    assert keys.load() == {"unseal_keys_b64": ["earlier"], "threshold": 1}


def test_other_keys_do_not_unseal_and_say_so(ready, tmp_path):
    bao, keys, admin = ready
    bao.restart()
    other = {"unseal_keys_b64": [base64.b64encode(os.urandom(33)).decode()] * 3}
    with pytest.raises((vault.VaultSetupError, VaultAPIError)):
        vault.unseal(bao.api(), other)
    assert bao.api().seal_status()["sealed"]
    assert vault.unseal(bao.api(), keys.load())


def test_a_keys_file_open_to_others_is_refused(tmp_path):
    keys = vault.KeysFile(tmp_path / "keys.json")
    keys.save({"threshold": 1})
    os.chmod(keys.path, 0o640)
    with pytest.raises(vault.VaultSetupError, match="vault_keys_file: .*chmod 600"):
        keys.load()


def test_objects_converge_and_a_second_pass_only_reads(ready):
    bao, keys, admin = ready
    policy = vault.worker_policy(["payments/card_primary"])
    role = vault.token_role("w1", 720, ["10.0.1.11/32"])
    assert vault.policy_differs(admin, "w1", policy)
    assert vault.role_differs(admin, "w1", role)
    admin.put("sys/policies/acl/w1", {"policy": policy})
    admin.put("auth/token/roles/w1", role)
    before = VaultAPI.calls
    assert not vault.mount_differs(admin)
    assert not vault.policy_differs(admin, "w1", policy)
    assert not vault.role_differs(admin, "w1", role)
    assert VaultAPI.calls - before == 3
    # Drift made by hand is seen.
    admin.put("auth/token/roles/w1", {**role, "token_bound_cidrs": ["0.0.0.0/0"]})
    assert vault.role_differs(admin, "w1", role)


def test_a_kv_mount_of_another_kind_is_refused_not_replaced(bao, tmp_path):
    bao.init_unsealed()
    root = bao.api(bao.root_token)
    root.delete("sys/mounts/secret")
    root.put("sys/mounts/secret", {"type": "kv", "options": {"version": "1"}})
    with pytest.raises(vault.VaultSetupError, match="KV version 2"):
        vault.mount_differs(root)


def test_worker_token_reads_exactly_its_paths_and_only_from_its_address(ready):
    bao, keys, admin = ready
    admin.put("secret/data/payments/card_primary", {"data": {"number": PLANTED}})
    admin.put("secret/data/crypto/BTC", {"data": {"seed": PLANTED}})
    for name, cidr in (("here", "127.0.0.1/32"), ("elsewhere", "10.9.9.9/32")):
        admin.put(f"sys/policies/acl/{name}",
                  {"policy": vault.worker_policy(["payments/card_primary", "crypto/TON"])})
        admin.put(f"auth/token/roles/{name}", vault.token_role(name, 720, [cidr]))
    token, accessor = vault.issue_token(admin, "here", {"host": "w1"})
    worker = bao.api(token)
    assert worker.get("secret/data/payments/card_primary")["data"]["data"]["number"] == PLANTED
    for path in ("secret/data/crypto/BTC", "secret/metadata/payments/card_primary",
                 "sys/policies/acl/here"):
        with pytest.raises(VaultAPIError) as caught:
            worker.get(path)
        assert caught.value.status == 403, path
    with pytest.raises(VaultAPIError) as caught:  # no listing, no creating of tokens
        worker.put("auth/token/create", {})
    assert caught.value.status == 403
    assert vault.token_health(admin, accessor, "here", 720) is None
    # A token bound to another address is refused here, even for its own paths.
    stolen, _ = vault.issue_token(admin, "elsewhere", {"host": "w2"})
    with pytest.raises(VaultAPIError) as caught:
        bao.api(stolen).get("secret/data/payments/card_primary")
    assert caught.value.status == 403


def test_token_health_says_why_a_token_must_be_reissued(ready):
    bao, keys, admin = ready
    admin.put("sys/policies/acl/w1", {"policy": vault.worker_policy(["crypto/TON"])})
    admin.put("sys/policies/acl/other", {"policy": vault.worker_policy(["crypto/TON"])})
    admin.put("auth/token/roles/w1", vault.token_role("w1", 720, ["127.0.0.1/32"]))
    _, accessor = vault.issue_token(admin, "w1", {})
    assert vault.token_health(admin, None, "w1", 720) == "none issued"
    assert vault.token_health(admin, accessor, "other", 720) == "other policies"
    # Period 720 h, but the role now issues 24 h tokens: less than a third is left.
    admin.put("auth/token/roles/short", vault.token_role("w1", 24, ["127.0.0.1/32"]))
    _, short = vault.issue_token(admin, "short", {})
    assert vault.token_health(admin, short, "w1", 720) == "near expiry"
    vault.revoke_accessor(admin, accessor)
    assert vault.token_health(admin, accessor, "w1", 720) == "revoked or expired"


def test_seed_values_are_written_once_and_never_in_messages(ready, tmp_path):
    bao, keys, admin = ready
    seed_file = tmp_path / "seed.yaml"
    seed_file.write_text(yaml.safe_dump({"payments/card_primary": {"number": PLANTED},
                                         "crypto/TON": {"seed": PLANTED + "-ton"}}))
    os.chmod(seed_file, 0o600)
    seed = vault.load_seed(seed_file)
    assert vault.seed_differs(admin, seed) == ["crypto/TON", "payments/card_primary"]
    vault.write_seed(admin, seed, vault.seed_differs(admin, seed))
    assert vault.seed_differs(admin, seed) == []
    os.chmod(seed_file, 0o644)
    with pytest.raises(vault.VaultSetupError) as caught:
        vault.load_seed(seed_file)
    assert "chmod 600" in str(caught.value) and PLANTED not in str(caught.value)
    # The audit log holds every request, values only as HMACs.
    audit = bao.audit_log.read_text()
    assert "secret/data/crypto/TON" in audit and PLANTED not in audit


def test_api_errors_name_the_path_never_the_body_or_token(ready):
    bao, keys, admin = ready
    with pytest.raises(VaultAPIError) as caught:
        bao.api("s.PLANTED-TOKEN-xyz").put("secret/data/x", {"data": {"v": PLANTED}})
    text = str(caught.value)
    assert "secret/data/x" in text and "403" in text
    assert PLANTED not in text and "PLANTED-TOKEN" not in text


def test_unseal_keys_encrypted_to_operators_pgp_keys(bao, tmp_path):
    """Init with two operators' public keys (ASCII-armored, as gpg exports them): the keys
    file holds only encrypted shares, the deploy cannot unseal with them, an operator's
    decrypted share can."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    public = []
    for n in (1, 2):
        uid = f"operator{n} <op{n}@example.invalid>"
        subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid,
                        "rsa2048", "encr", "never"], env=env, check=True, capture_output=True)
        out = tmp_path / f"op{n}.asc"
        out.write_bytes(subprocess.run(["gpg", "--armor", "--export", uid], env=env,
                                       check=True, capture_output=True).stdout)
        public.append(vault.pgp_key_b64(out))
    keys = vault.KeysFile(tmp_path / "keys.json")
    vault.initialise(bao.api(), keys, vault.InitPlan(shares=2, threshold=2,
                                                    pgp_keys=tuple(public)))
    doc = keys.load()
    assert "unseal_keys_b64" not in doc and len(doc["unseal_keys_pgp"]) == 2
    assert vault.unseal(bao.api(), doc) is False
    for share in doc["unseal_keys_pgp"]:
        decrypted = subprocess.run(["gpg", "--batch", "--decrypt"], env=env, check=True,
                                   capture_output=True, input=base64.b64decode(share)).stdout
        answer = bao.api().put("sys/unseal", {"key": decrypted.decode()}, authenticated=False)
    assert answer["sealed"] is False


def test_static_seal_unseals_itself_after_a_restart(tmp_path):
    server = OpenBao(tmp_path / "static", static_seal=True).start()
    try:
        keys = vault.KeysFile(tmp_path / "keys.json")
        vault.initialise(server.api(), keys, vault.InitPlan(shares=3, threshold=2,
                                                           recovery=True))
        doc = keys.load()
        assert len(doc["recovery_keys_b64"]) == 3 and "unseal_keys_b64" not in doc
        vault.wait_until_active(server.api())
        server.restart()
        vault.wait_until_active(server.api())
        status = server.api().seal_status()
        # What the deploy checks before changing the seal setting of an initialised server.
        assert status["sealed"] is False and status["recovery_seal"] is True
    finally:
        server.stop()


def test_snapshot_restores_into_fresh_storage(ready, tmp_path):
    """What autocode-vault-restore does: a snapshot forced into a freshly initialised
    server brings back the data under the snapshot's own keys."""
    bao, keys, admin = ready
    admin.put("secret/data/payments/card_primary", {"data": {"number": PLANTED}})
    snapshot = _raw(bao, "GET", "sys/storage/raft/snapshot", keys.load()["admin_token"])
    bao.stop()
    bao.wipe_storage()
    bao.start()
    bao.init_unsealed()  # the throwaway init
    _raw(bao, "POST", "sys/storage/raft/snapshot-force", bao.root_token, snapshot)
    bao.restart()
    assert bao.api().seal_status()["sealed"]
    assert vault.unseal(bao.api(), keys.load())
    vault.wait_until_active(bao.api())
    data = admin.get("secret/data/payments/card_primary")["data"]["data"]
    assert data == {"number": PLANTED}


def _raw(bao, method, path, token, body=None):
    import ssl
    import urllib.request

    request = urllib.request.Request(f"{bao.url}/v1/{path}", data=body, method=method,
                                     headers={"X-Vault-Token": token})
    context = ssl.create_default_context(cadata=bao.ca_pem)
    with urllib.request.urlopen(request, context=context) as response:
        return response.read()


# -- bad input, refused before any host is touched ------------------------------------------


def _problems(role, **data):
    group = "orchestrator" if role == "orchestrator" else "workers"
    merged = {**group_defaults(group), "worker_network": "10.0.1.0/24",
              "ssh_hostname": "10.0.1.11", **data}
    return "\n".join(components.check_host("h", role, merged))


def test_bad_secret_paths_are_named(tmp_path):
    for bad in ("../payments", "payments/../../sys", "crypto/TON\n", "/abs", "crypto/*",
                "a//b", "crypto/.", 7):
        text = _problems("worker", secret_paths=["crypto/TON", bad])
        assert "secret_paths:" in text and "no '..'" in text, bad
    assert _problems("worker", secret_paths="crypto/TON").count("secret_paths") == 1
    assert _problems("worker") == ""
    assert "'h': address: 'w1.example' is a name" in _problems("worker",
                                                                ssh_hostname="w1.example")


def test_unknown_secrets_server_and_other_settings_are_named(tmp_path):
    text = _problems("orchestrator", secrets_server="consul", vault_key_shares=3,
                     vault_key_threshold=4, vault_token_period_hours=1,
                     vault_api_url="http://x:8200")
    for field in ("secrets_server", "vault_key_threshold", "vault_token_period_hours",
                  "vault_api_url"):
        assert f"'h': {field}: " in text, field
    assert "use one of openbao, vault" in text
    text = _problems("orchestrator", secrets_server="vault", vault_unattended_unseal=True)
    assert "vault_unattended_unseal: vault has no seal" in text


def test_seed_file_open_to_others_is_refused_without_showing_values(tmp_path):
    seed = tmp_path / "seed.yaml"
    seed.write_text(yaml.safe_dump({"payments/card_primary": {"number": PLANTED}}))
    os.chmod(seed, 0o644)
    text = _problems("orchestrator", vault_seed_file=str(seed))
    assert "vault_seed_file:" in text and "chmod 600" in text and PLANTED not in text
    os.chmod(seed, 0o600)
    assert _problems("orchestrator", vault_seed_file=str(seed)) == ""
    seed.write_text(yaml.safe_dump({"../etc": {"number": PLANTED}, "ok/path": "flat"}))
    text = _problems("orchestrator", vault_seed_file=str(seed))
    assert text.count("vault_seed_file:") == 2 and PLANTED not in text
    # Reported beside another field's problem, in the same pass.
    os.chmod(seed, 0o644)
    pgp = str(tmp_path / "missing.asc")
    text = _problems("orchestrator", vault_seed_file=str(seed), secrets_server="hashicorp",
                     vault_key_shares=1, vault_key_threshold=1, vault_pgp_keys=[pgp])
    for field in ("vault_seed_file", "secrets_server", "vault_pgp_keys"):
        assert f"'h': {field}: " in text, field
    assert f"{pgp} cannot be read" in text


def test_bad_vault_settings_stop_the_inventory_before_any_connection(tmp_path):
    """The inventory loader runs the checks: a bad entry is an InventoryError naming the
    host and field, raised before pyinfra connects to anything (the addresses here are
    unroutable; nothing is contacted)."""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(yaml.safe_dump({
        "data": {"worker_network": "10.0.1.0/24", "secrets_server": "hashivault"},
        "orchestrator": {"name": "orch", "address": "192.0.2.1", "worker_address": "10.0.1.1"},
        "workers": [{"name": "w1", "address": "10.0.1.11",
                     "data": {"secret_paths": ["crypto/../../x"]}}],
    }))
    with pytest.raises(InventoryError) as caught:
        load(components, inventory)
    text = caught.value.render()
    assert "orchestrator 'orch': secrets_server:" in text
    assert "worker 'w1': secret_paths:" in text


def test_keys_file_defaults_beside_the_inventory(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOCODE_INVENTORY", str(tmp_path / "site.yaml"))
    assert Vault.from_data({}).keys_file() == tmp_path / "site.vault-keys.json"
    assert Vault.from_data({"vault_keys_file": "~/k.json"}).keys_file() == \
        Path("~/k.json").expanduser()


def test_a_bootstrap_cut_short_is_finished_and_the_admin_token_lives_a_year(bao, tmp_path):
    keys = vault.KeysFile(tmp_path / "keys.json")
    vault.initialise(bao.api(), keys, vault.InitPlan(shares=1, threshold=1))
    vault.unseal(bao.api(), keys.load())
    vault.wait_until_active(bao.api())
    vault.bootstrap_admin(bao.api(), keys)
    # As if the run had died after saving the admin token, before revoking root: the root
    # token is back in the file (already revoked or not, the next run drops it).
    doc = keys.load()
    root = bao.api(doc["admin_token"])
    doc["root_token"] = "s.already-revoked-token"
    keys.save(doc)
    vault.bootstrap_admin(bao.api(), keys)
    assert keys.load()["root_token"] is None
    info = root.get("auth/token/lookup-self")["data"]
    assert info["ttl"] > 8000 * 3600 and vault.admin_token_health(root) is None


def test_hosts_gone_from_the_inventory_lose_their_policy_and_role(ready):
    bao, keys, admin = ready
    for name in ("autocode-worker-w1", "autocode-worker-w2", "unrelated"):
        admin.put(f"sys/policies/acl/{name}", {"policy": vault.worker_policy(["crypto/TON"])})
        admin.put(f"auth/token/roles/{name}", vault.token_role(name, 720, ["127.0.0.1/32"]))
    admin.put("secret/data/crypto/TON", {"data": {"seed": PLANTED}})
    token, _ = vault.issue_token(admin, "autocode-worker-w2", {})
    assert bao.api(token).get("secret/data/crypto/TON")
    found = vault.stale(admin, "autocode-worker-", {"autocode-worker-w1"})
    assert found == {"policies": ["autocode-worker-w2"], "roles": ["autocode-worker-w2"]}
    vault.prune(admin, found)
    assert vault.stale(admin, "autocode-worker-", {"autocode-worker-w1"}) == \
        {"policies": [], "roles": []}
    with pytest.raises(VaultAPIError) as caught:
        bao.api(token).get("secret/data/crypto/TON")
    assert caught.value.status == 403
    assert not vault.policy_differs(admin, "unrelated", vault.worker_policy(["crypto/TON"]))


def test_a_worker_token_cannot_extend_itself(ready):
    bao, keys, admin = ready
    admin.put("sys/policies/acl/w1", {"policy": vault.worker_policy(["crypto/TON"])})
    admin.put("auth/token/roles/w1", vault.token_role("w1", 720, ["127.0.0.1/32"]))
    token, _ = vault.issue_token(admin, "w1", {})
    with pytest.raises(VaultAPIError) as caught:
        bao.api(token).put("auth/token/renew-self")
    assert caught.value.status == 403


def test_the_api_port_is_open_to_management_networks_only():
    from infra.render import render

    rules = render("network/orchestrator.rules.v4.j2", worker_network="10.0.1.0/24",
                   proxy_port=8080, dns_port=53, worker_tcp_ports=[8080, 8200],
                   management_tcp_ports=[8200],
                   management_networks=["192.0.2.0/24", "198.51.100.7/32"]).splitlines()
    jump = rules.index("-A INPUT -s 10.0.1.0/24 ! -i lo -j AUTOCODE-FROM-WORKERS")
    allow = [rules.index(f"-A INPUT -s {n} -p tcp -m tcp --dport 8200 -j ACCEPT")
             for n in ("192.0.2.0/24", "198.51.100.7/32")]
    drop = rules.index("-A INPUT ! -i lo -p tcp -m tcp --dport 8200 -j DROP")
    assert jump < min(allow) and max(allow) < drop
    text = _problems("orchestrator", management_networks=["192.0.2.0/24", "fd00::/8", "x"])
    assert text.count("management_networks:") == 2

