"""Vault's own state (initialised, sealed, mounts, policies, token roles, tokens) read through
its HTTP API from the control machine, and changed only where it differs.

Two layers:
- plain functions over `VaultAPI` (init, unseal, the admin bootstrap, objects compared and
  written, tokens issued), which the unit tests run against a real OpenBao;
- pyinfra operations over them. At plan time an operation reads the state; when it is
  converged it reports no change, when it differs it yields a Python callback that reads
  again and changes what differs at run time. When Vault cannot be read at plan time (not
  installed yet, starting, restarting in this run) the callback does all of it.

Secrets never appear in a callback's arguments (pyinfra prints them at -vv), in a command
line, in an exception message or in a log line: tokens and keys travel only in API bodies,
in the 0600 keys file on the control machine, and in files uploaded over SFTP.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import time
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import yaml
from pyinfra import host as current_host
from pyinfra.api import FunctionCommand, OperationError, operation

from . import keys_file
from .control_api import ServiceSession, per_stage, reported
from .facts import FileText, PathStates, fact_once, q, read_items, reads
from .vault_api import VaultAPI, VaultAPIError

log = logging.getLogger("pyinfra")

KV_MOUNT = "secret"
ADMIN_POLICY = "autocode-deploy"
# What the deploy's own token may do: run this module, and nothing it does not need
# (no sys/raw, no seal, no rekey, no generate-root).
ADMIN_POLICY_TEXT = """\
# Managed by autocode (infra/vault.py): the deploy's token.
path "sys/mounts" { capabilities = ["read"] }
path "sys/auth/token/tune" { capabilities = ["read", "update", "sudo"] }
path "sys/mounts/secret" { capabilities = ["create", "read", "update"] }
path "sys/policies/acl" { capabilities = ["list"] }
path "sys/policies/acl/*" { capabilities = ["create", "read", "update", "delete", "list"] }
path "auth/token/roles" { capabilities = ["list"] }
path "auth/token/roles/*" { capabilities = ["create", "read", "update", "delete", "list"] }
path "auth/token/create/*" { capabilities = ["create", "update", "sudo"] }
path "auth/token/lookup-accessor" { capabilities = ["update"] }
path "auth/token/revoke-accessor" { capabilities = ["update"] }
path "auth/token/lookup-self" { capabilities = ["read"] }
path "auth/token/renew-self" { capabilities = ["update"] }
path "secret/data/*" { capabilities = ["create", "read", "update"] }
path "secret/metadata/*" { capabilities = ["read", "list"] }
path "sys/storage/raft/snapshot" { capabilities = ["read"] }
path "sys/audit" { capabilities = ["read", "sudo"] }
path "sys/audit/*" { capabilities = ["create", "update", "sudo"] }
"""
ADMIN_PERIOD = "8760h"
# Tokens of the token auth method live at most this long (Vault's default is 768 h, which
# would cut a year's admin period and any token period over 32 days).
TOKEN_MAX_TTL_HOURS = 8784
# A worker's or service's token is renewed by reissue when less than this share of its
# period is left.
RENEW_BELOW = 1 / 3


class VaultSetupError(OperationError):
    """A problem the operator has to act on; the message says what to do. An
    OperationError, so pyinfra reports it as the operation's failure."""


# -- the keys file on the control machine ---------------------------------------------------


class KeysFile(keys_file.KeysFile):
    """Unseal (or recovery) keys, the root token until the deploy's admin token replaces it,
    and that admin token: JSON, 0600, on the control machine only."""

    field = "vault_keys_file"
    holds = "Vault's unseal keys"
    if_read = ", and rekey Vault if anyone else may have read it"
    error = VaultSetupError


# -- lifecycle over the API -----------------------------------------------------------------


def wait_until_answering(api: VaultAPI, seconds: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return api.seal_status()
        except VaultAPIError as exc:
            if time.monotonic() > deadline:
                raise VaultSetupError(
                    f"Vault's API at {api.url} did not answer within {seconds:.0f} s ({exc}); "
                    "check the service on the orchestrator (journalctl -u its unit) and that "
                    "the control machine reaches vault_port, or set vault_api_url") from None
            time.sleep(0.5)


def wait_until_active(api: VaultAPI, seconds: float = 60.0) -> None:
    """Unsealed and the active node: raft elects itself a moment after unseal."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            health = api.get("sys/health", authenticated=False, ok=(429, 472, 473, 501, 503))
        except VaultAPIError:
            health = None
        if health and not health.get("sealed") and not health.get("standby"):
            return
        if time.monotonic() > deadline:
            raise VaultSetupError(f"Vault at {api.url} is not active {seconds:.0f} s after "
                                  "unseal; see its journal on the orchestrator")
        time.sleep(0.3)


def wiped_message(url: str, path: Path) -> str:
    return (f"Vault at {url} is not initialised, but {path} holds keys of an earlier one: "
            "its storage was wiped or replaced. Restore the storage from a backup (README, "
            "'Restoring Vault'), or move the keys file away to start a new, empty secret "
            "store. Nothing was changed")


@dataclass(frozen=True)
class InitPlan:
    shares: int
    threshold: int
    pgp_keys: tuple[str, ...] = ()  # base64 of binary public keys, one per share
    recovery: bool = False  # an auto-unseal seal: recovery keys instead of unseal keys


def initialise(api: VaultAPI, keys: KeysFile, plan: InitPlan) -> None:
    """Initialise Vault and write what it answers to the keys file before anything else."""
    if keys.exists():
        raise VaultSetupError(wiped_message(api.url, keys.path))
    if plan.recovery:
        body: dict[str, Any] = {"recovery_shares": plan.shares,
                                "recovery_threshold": plan.threshold}
        if plan.pgp_keys:
            body["recovery_pgp_keys"] = list(plan.pgp_keys)
    else:
        body = {"secret_shares": plan.shares, "secret_threshold": plan.threshold}
        if plan.pgp_keys:
            body["pgp_keys"] = list(plan.pgp_keys)
    answer = api.put("sys/init", body, authenticated=False) or {}
    doc: dict[str, Any] = {
        "vault_addr": api.url, "initialised_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                               time.gmtime()),
        "threshold": plan.threshold, "root_token": answer.get("root_token"),
    }
    if plan.recovery:
        doc["recovery_keys" + ("_pgp" if plan.pgp_keys else "_b64")] = \
            answer.get("recovery_keys_b64") or answer.get("recovery_keys") or []
    elif plan.pgp_keys:
        doc["unseal_keys_pgp"] = answer.get("keys_base64") or answer.get("keys") or []
    else:
        doc["unseal_keys_b64"] = answer.get("keys_base64") or []
    keys.save(doc)


def unseal(api: VaultAPI, doc: dict[str, Any]) -> bool:
    """Unseal with the keys in the keys file; False when it holds none usable (they are
    encrypted to operators' PGP keys, or it has recovery keys only)."""
    unseal_keys = doc.get("unseal_keys_b64") or []
    if not unseal_keys:
        return False
    api.put("sys/unseal", {"reset": True}, authenticated=False)
    for key in unseal_keys:
        answer = api.put("sys/unseal", {"key": key}, authenticated=False) or {}
        if not answer.get("sealed", True):
            return True
    raise VaultSetupError(f"Vault at {api.url} is still sealed after every key in the keys "
                          "file: they are not this server's keys (see 'Restoring Vault' in "
                          "the README)")


def bootstrap_admin(api: VaultAPI, keys: KeysFile) -> None:
    """With the root token: the deploy's admin policy and an orphan periodic token for it,
    saved to the keys file; then the root token is revoked and dropped from the file. A run
    that stopped half-way is finished by the next one."""
    doc = keys.load() or {}
    root_token = doc.get("root_token")
    if not root_token:
        return
    root = api.with_token(root_token)
    if not doc.get("admin_token"):
        ensure_token_tune(root)
        root.put(f"sys/policies/acl/{ADMIN_POLICY}", {"policy": ADMIN_POLICY_TEXT})
        answer = root.put("auth/token/create-orphan", {
            "policies": [ADMIN_POLICY], "no_default_policy": True, "period": ADMIN_PERIOD,
            "display_name": "autocode-deploy", "renewable": True}) or {}
        auth = answer.get("auth") or {}
        doc["admin_token"] = auth.get("client_token")
        doc["admin_accessor"] = auth.get("accessor")
        if not doc["admin_token"]:
            raise VaultSetupError("Vault did not return a token for the deploy")
        keys.save(doc)
    # 403: revoked already, by a run that stopped before it could drop it from the file.
    root.put("auth/token/revoke-self", ok=(403,))
    doc["root_token"] = None
    doc["root_token_revoked_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    keys.save(doc)


def admin_token_health(admin: VaultAPI) -> str | None:
    """None when the deploy's token is valid with more than half its period left; else
    "renew" (it is valid, renew it) or "invalid"."""
    info = admin.get("auth/token/lookup-self", ok=(403,))
    data = (info or {}).get("data")
    if not data:
        return "invalid"
    period = min(data.get("period") or 0, TOKEN_MAX_TTL_HOURS * 3600)
    return "renew" if period and (data.get("ttl") or 0) < period / 2 else None


def token_tune_differs(admin: VaultAPI) -> bool:
    tune = admin.get("sys/auth/token/tune") or {}
    return ((tune.get("data") or tune).get("max_lease_ttl") or 0) < TOKEN_MAX_TTL_HOURS * 3600


def ensure_token_tune(api: VaultAPI) -> None:
    if token_tune_differs(api):
        api.put("sys/auth/token/tune", {"max_lease_ttl": f"{TOKEN_MAX_TTL_HOURS}h"})


# -- objects: mounts, policies, token roles -------------------------------------------------


def worker_policy(paths: list[str]) -> str:
    lines = ["# Managed by autocode (infra/vault.py): exactly what this token may read."]
    lines += [f'path "{KV_MOUNT}/data/{p}" {{ capabilities = ["read"] }}' for p in paths]
    # No renew-self: only a re-apply extends a worker's access, so a worker taken out of
    # the inventory loses it within one token period even if its agent is still running.
    lines += ['path "auth/token/lookup-self" { capabilities = ["read"] }']
    return "\n".join(lines) + "\n"


def token_role(policy: str, period_hours: int, bound_cidrs: list[str]) -> dict[str, Any]:
    return {"allowed_policies": [policy], "orphan": True, "renewable": True,
            "token_period": period_hours * 3600, "token_bound_cidrs": sorted(bound_cidrs),
            "token_no_default_policy": True, "token_type": "service"}


def mount_differs(admin: VaultAPI) -> bool:
    mounts = (admin.get("sys/mounts") or {}).get("data") or {}
    have = mounts.get(f"{KV_MOUNT}/")
    if have is None:
        return True
    if have.get("type") != "kv" or (have.get("options") or {}).get("version") != "2":
        raise VaultSetupError(f"Vault has a {have.get('type')} engine at {KV_MOUNT}/ where "
                              "SecretManager expects KV version 2; move it (nothing is "
                              "removed automatically)")
    return False


def ensure_mount(admin: VaultAPI) -> None:
    if mount_differs(admin):
        admin.put(f"sys/mounts/{KV_MOUNT}", {"type": "kv", "options": {"version": "2"},
                                             "description": "autocode secrets"})


def policy_differs(admin: VaultAPI, name: str, text: str) -> bool:
    have = admin.get(f"sys/policies/acl/{name}", ok=(404,))
    return ((have or {}).get("data") or {}).get("policy") != text


def _cidr(text: str) -> str:
    """Vault answers a /32 (or /128) CIDR as the bare address."""
    net = ipaddress.ip_network(text, strict=False)
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def role_differs(admin: VaultAPI, name: str, want: dict[str, Any]) -> bool:
    have = ((admin.get(f"auth/token/roles/{name}", ok=(404,)) or {}).get("data")) or {}
    for key, value in want.items():
        got = have.get(key)
        if key == "token_bound_cidrs":
            got, value = sorted(map(_cidr, got or [])), sorted(map(_cidr, value))
        elif isinstance(value, list):
            got = sorted(got or [])
        if got != value:
            return True
    return False


def stale(admin: VaultAPI, prefix: str, keep: set[str]) -> dict[str, list[str]]:
    """Policies and token roles named `prefix...` that are not in `keep`: those of hosts
    gone from the inventory."""
    found = {}
    for kind, path in (("policies", "sys/policies/acl"), ("roles", "auth/token/roles")):
        keys = ((admin.get(f"{path}?list=true", ok=(404,)) or {}).get("data") or {}).get("keys")
        found[kind] = sorted(k for k in keys or [] if k.startswith(prefix) and k not in keep)
    return found


def prune(admin: VaultAPI, found: dict[str, list[str]]) -> None:
    # The role first, so no new token comes from it; without its policy, a token the
    # role issued can read nothing any more.
    for name in found["roles"]:
        admin.delete(f"auth/token/roles/{name}")
    for name in found["policies"]:
        admin.delete(f"sys/policies/acl/{name}")


# -- tokens ---------------------------------------------------------------------------------


def token_health(admin: VaultAPI, accessor: str | None, policy: str,
                 period_hours: int) -> str | None:
    """None when the token behind `accessor` is valid, holds exactly `policy` and has more
    than RENEW_BELOW of its period left; else why it has to be reissued."""
    if not accessor:
        return "none issued"
    info = admin.put("auth/token/lookup-accessor", {"accessor": accessor}, ok=(400, 403, 404))
    data = (info or {}).get("data")
    if not data:
        return "revoked or expired"
    if sorted(data.get("policies") or []) != [policy]:
        return "other policies"
    if (data.get("ttl") or 0) < period_hours * 3600 * RENEW_BELOW:
        return "near expiry"
    return None


def issue_token(admin: VaultAPI, role: str, meta: dict[str, str]) -> tuple[str, str]:
    answer = admin.put(f"auth/token/create/{role}", {"meta": meta, "display_name": role}) or {}
    auth = answer.get("auth") or {}
    if not auth.get("client_token"):
        raise VaultSetupError(f"Vault issued no token for role {role}")
    return auth["client_token"], auth["accessor"]


def revoke_accessor(admin: VaultAPI, accessor: str) -> None:
    admin.put("auth/token/revoke-accessor", {"accessor": accessor}, ok=(400, 403, 404))


# -- seed values ----------------------------------------------------------------------------


def load_seed(path: Path | str) -> dict[str, dict[str, Any]]:
    """The seed file: {path: {field: value}}; refused when others may read it."""
    path = Path(path).expanduser()
    st = path.stat()
    if st.st_mode & 0o077:
        raise VaultSetupError(f"vault_seed_file: {path} is open to other users (mode "
                              f"{st.st_mode & 0o777:04o}); chmod 600 it")
    doc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(doc, dict):
        raise VaultSetupError(f"vault_seed_file: {path} must map secret paths to fields")
    return doc


def seed_differs(admin: VaultAPI, seed: dict[str, dict[str, Any]]) -> list[str]:
    changed = []
    for path, fields in sorted(seed.items()):
        have = admin.get(f"{KV_MOUNT}/data/{path}", ok=(404,))
        if ((have or {}).get("data") or {}).get("data") != fields:
            changed.append(path)
    return changed


def write_seed(admin: VaultAPI, seed: dict[str, dict[str, Any]], paths: list[str]) -> None:
    for path in paths:
        admin.put(f"{KV_MOUNT}/data/{path}", {"data": seed[path]})


# -- the session the operations share -------------------------------------------------------


@dataclass
class Session(ServiceSession):
    """What the deploy knows of Vault in this run: where it is, the CA to verify it by,
    the keys file, and (once read) its seal status. One per run, shared by all hosts."""

    status: dict[str, Any] | None = None
    skip_reason: str | None = None
    status_read: bool = False
    warned: set = field(default_factory=set)

    def api(self) -> VaultAPI:
        return VaultAPI(self.url, self.ca_pem)

    def read_status(self) -> dict[str, Any] | None:
        """Seal status at plan time; None when Vault cannot be read yet."""
        if not self.plan_time_ca():
            return None
        try:
            self.status = self.api().seal_status()
        except VaultAPIError:
            self.status = None
        self.status_read = True
        return self.status

    def admin(self) -> VaultAPI:
        doc = self.keys.load()
        token = (doc or {}).get("admin_token")
        if not token:
            raise VaultSetupError(
                f"no admin token for Vault in {self.keys.path}: the deploy cannot configure "
                "Vault. Restore the keys file, or make a token with the autocode-deploy "
                "policy (bao operator generate-root, then `bao token create -policy="
                "autocode-deploy -period=8760h -orphan`) and put it there as admin_token")
        return self.api().with_token(token)

    def usable(self) -> bool:
        """At plan time: Vault answers, is unsealed, and the deploy has its token. Read here
        when no operation read it yet: pyinfra may plan a worker before the orchestrator."""
        if not self.status_read:
            self.read_status()
        return bool(self.status and self.status.get("initialized")
                    and not self.status.get("sealed") and self.skip_reason is None)

    def warn(self, what: str, message: str) -> None:
        if what not in self.warned:
            self.warned.add(what)
            log.warning(message)


def session(state, orchestrator, url: str, keys_path: Path, ca_path: str) -> Session:
    return per_stage(state, "vault", lambda: Session(
        url=url, keys=KeysFile(keys_path), orchestrator=orchestrator, ca_path=ca_path))


# -- operations -----------------------------------------------------------------------------


_reported = reported(VaultAPIError, VaultSetupError)


@operation()
@_reported
def vault_ready(vault: Session, plan: InitPlan, restarted: tuple = ()):
    """Vault initialised (keys to the keys file), unsealed from the keys file, and the
    deploy's admin token made (then the root token revoked).

    + vault: the run's Session
    + plan: key shares, threshold, PGP keys, and whether the seal is an auto-unseal one
    + restarted: operations that restart the server in this run (it comes back sealed)
    """
    status = vault.read_status()
    if status is None or any(op.changed for op in restarted):
        yield FunctionCommand(_ready_at_run_time, (vault, plan), {})
        return
    doc = vault.keys.load()
    if not status.get("initialized"):
        if doc is not None:
            raise VaultSetupError(wiped_message(vault.url, vault.keys.path))
        yield FunctionCommand(_ready_at_run_time, (vault, plan), {})
        return
    if doc is None:
        vault.skip_reason = "no keys file"
        vault.warn("keys", f"Vault at {vault.url} is initialised, but the keys file "
                   f"{vault.keys.path} is missing: skipping everything that needs Vault. "
                   "Restore the file, or set vault_keys_file to where it is")
        host_noop("Vault: no keys file; its configuration is skipped")
        return
    if status.get("sealed"):
        if not doc.get("unseal_keys_b64"):
            vault.skip_reason = "sealed"
            vault.warn("sealed", f"Vault at {vault.url} is SEALED and the keys file holds no "
                       "unseal keys the deploy can use (they are encrypted to operators' PGP "
                       "keys, or they are recovery keys of an auto-unseal seal that did not "
                       f"unseal): unseal it with `bao operator unseal` ({doc.get('threshold')} "
                       "keys) or mend the seal, then apply again. Everything that needs Vault "
                       "is skipped")
            host_noop("Vault is sealed; its configuration is skipped")
            return
        vault.warn("sealed", f"Vault at {vault.url} is sealed: this apply unseals it with the "
                   f"keys in {vault.keys.path}")
        yield FunctionCommand(_ready_at_run_time, (vault, plan), {})
        return
    if doc.get("root_token"):
        yield FunctionCommand(_ready_at_run_time, (vault, plan), {})
        return
    token = admin_token_health(vault.admin())
    if token == "invalid":
        vault.skip_reason = "refusing the deploy's token"
        vault.warn("admin", f"Vault refuses the admin token in {vault.keys.path} (revoked, or "
                   "expired after a year without an apply): everything that needs Vault is "
                   "skipped. Make a new one (README, 'The deploy's Vault token')")
        host_noop("Vault refuses the deploy's token; its configuration is skipped")
        return
    if token == "renew":
        yield FunctionCommand(_renew_admin, (vault,), {})
        return
    host_noop(f"Vault at {vault.url} is initialised and unsealed")


def _renew_admin(state, host, vault: Session) -> None:
    vault.admin().put("auth/token/renew-self")


def _ready_at_run_time(state, host, vault: Session, plan: InitPlan) -> None:
    vault.ca_at_run_time()
    api = vault.api()
    status = wait_until_answering(api)
    if not status.get("initialized"):
        initialise(api, vault.keys, plan)
        host.log(f"Vault initialised; its keys are in {vault.keys.path} (0600)")
        status = api.seal_status()
    doc = vault.keys.load()
    if doc is None:
        raise OperationError(f"Vault is initialised but {vault.keys.path} is missing")
    if status.get("sealed"):
        if not unseal(api, doc):
            if plan.recovery:
                wait_until_active(api)  # an auto-unseal seal unseals by itself
            else:
                vault.skip_reason = "sealed"
                vault.warn("sealed", f"Vault at {vault.url} is SEALED: its unseal keys are "
                           "encrypted to operators' PGP keys; unseal it with `bao operator "
                           "unseal`, then apply again")
                return
    wait_until_active(api)
    bootstrap_admin(api, vault.keys)
    vault.status = api.seal_status()


def host_noop(message: str) -> None:
    current_host.noop(message)


def _skip(vault: Session, what: str) -> bool:
    """At plan time: True when Vault-dependent work must be skipped (reported once)."""
    if vault.skip_reason:
        host_noop(f"{what}: skipped, Vault is {vault.skip_reason}")
        return True
    return False


def audit_differs(admin: VaultAPI, audit: dict[str, Any] | None) -> bool:
    if audit is None:
        return False
    have = (admin.get("sys/audit") or {}).get("data") or {}
    return "file/" not in have


@operation()
@_reported
def vault_objects(vault: Session, policies: dict[str, str], roles: dict[str, dict],
                  audit: dict[str, Any] | None = None, tune: bool = False,
                  kv_mount: bool = True):
    """The KV v2 mount at `secret`, and these ACL policies and token roles, each exactly
    as given (others are left alone).

    + vault: the run's Session
    + policies: name -> policy text
    + roles: token role name -> its settings (token_role())
    + audit: a file audit device to enable through the API at file/ (HashiCorp Vault; OpenBao
      declares it in its configuration file instead)
    + tune: also the token auth method's maximum TTL (TOKEN_MAX_TTL_HOURS)
    + kv_mount: also the KV engine (the orchestrator's call sees to it; workers' need not)
    """
    if _skip(vault, "Vault objects"):
        return
    if vault.usable():
        admin = vault.admin()
        # Policies before the tune: an older deploy policy may not allow reading it.
        differs = ((kv_mount and mount_differs(admin))
                   or any(policy_differs(admin, n, t) for n, t in sorted(policies.items()))
                   or (tune and token_tune_differs(admin)) or audit_differs(admin, audit)
                   or any(role_differs(admin, n, r) for n, r in sorted(roles.items())))
        if not differs:
            host_noop(f"Vault: {KV_MOUNT}/, {len(policies)} policies and {len(roles)} token "
                      "roles as wanted")
            return
    yield FunctionCommand(_objects_at_run_time,
                          (vault, policies, roles, audit, tune, kv_mount), {})


def _objects_at_run_time(state, host, vault: Session, policies, roles, audit, tune,
                         kv_mount) -> None:
    if vault.skip_reason:
        return
    admin = vault.admin()
    if kv_mount:
        ensure_mount(admin)
    # Its own policy first: an older one may lack what the rest needs (the tune).
    for name in sorted(policies, key=lambda n: n != ADMIN_POLICY):
        if policy_differs(admin, name, policies[name]):
            admin.put(f"sys/policies/acl/{name}", {"policy": policies[name]})
    if tune:
        ensure_token_tune(admin)
    if audit_differs(admin, audit):
        admin.put("sys/audit/file", audit)
    for name, want in sorted(roles.items()):
        if role_differs(admin, name, want):
            admin.put(f"auth/token/roles/{name}", want)


@operation()
@_reported
def vault_pruned(vault: Session, prefix: str, keep: tuple[str, ...]):
    """No policy or token role named `prefix...` but those in `keep`: a host taken out of
    the inventory loses its access to Vault at the next apply.

    + vault: the run's Session
    + prefix: the name prefix this deploy owns, e.g. autocode-worker-
    + keep: the names of the hosts still in the inventory
    """
    if _skip(vault, "Vault access of removed hosts"):
        return
    if vault.usable():
        found = stale(vault.admin(), prefix, set(keep))
        if not found["policies"] and not found["roles"]:
            host_noop(f"Vault: no {prefix}* policy or role of a removed host")
            return
    yield FunctionCommand(_prune_at_run_time, (vault, prefix, keep), {})


def _prune_at_run_time(state, host, vault: Session, prefix, keep) -> None:
    if vault.skip_reason:
        return
    admin = vault.admin()
    found = stale(admin, prefix, set(keep))
    prune(admin, found)
    if found["policies"] or found["roles"]:
        host.log(f"Vault: removed {', '.join(sorted(set(found['policies'] + found['roles'])))}")


@reads(PathStates, lambda a: a["batch"] or (a["path"], a["record"]))
@operation()
@_reported
def vault_token_file(vault: Session, path: str, owner: str, group: str, role: str,
                     policy: str, period_hours: int, record: str,
                     batch: tuple[str, ...] = ()):
    """A token of token role `role` in a 0600 file on this host: issued when there is
    none, when the one there was revoked, expires within a third of its period, carries
    other policies, or the file no longer holds it; the replaced one is revoked.

    + vault: the run's Session
    + path: the token file on this host
    + owner, group: its owner (the account that uses it)
    + role: the token role to issue from (its policy and bound CIDRs)
    + policy: the one policy the token must carry
    + period_hours: the role's period
    + record: a root-only file on this host holding the token's accessor and digest
    + batch: paths (including both files) whose state is read in one fact, once per run
    """
    if _skip(vault, f"token {path}"):
        return
    recorded = _parse_record(fact_once(current_host, FileText, path=record))
    files = read_items(current_host, PathStates, paths=tuple(batch) or (path, record))
    have = files.get(path)
    if vault.usable():
        why = token_health(vault.admin(), recorded.get("accessor"), policy, period_hours)
        if why is None and (have is None or have.get("sha256") != recorded.get("sha256")):
            why = "file does not hold it"
        if why is None:
            changes = []
            if (have["user"], have["group"]) != (owner, group):
                changes.append(f"chown {q(owner)}:{q(group)} {q(path)}")
            if have["mode"] != "600":
                changes.append(f"chmod 600 {q(path)}")
            if not changes:
                host_noop(f"{path}: a valid token of role {role}")
            yield from changes
            return
    yield FunctionCommand(_token_at_run_time,
                          (vault, path, owner, group, role, policy, period_hours, record), {})


def _parse_record(text: str | None) -> dict[str, str]:
    try:
        doc = json.loads(text or "{}")
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _token_at_run_time(state, host, vault: Session, path, owner, group, role, policy,
                       period_hours, record) -> None:
    if vault.skip_reason:
        return
    admin = vault.admin()
    ok, output = host.run_shell_command(f"cat -- {q(record)} 2>/dev/null || true")
    recorded = _parse_record("\n".join(output.stdout_lines)) if ok else {}
    token, accessor = issue_token(admin, role, {"host": host.name})
    staged = f"{path}.autocode-new"
    ok, _ = host.run_shell_command(f"rm -f {q(staged)} && install -m 600 /dev/null {q(staged)}")
    if not ok or not host.put_file(StringIO(token + "\n"), staged):
        revoke_accessor(admin, accessor)
        raise OperationError(f"could not write {staged} on {host.name}")
    digest = hashlib.sha256((token + "\n").encode()).hexdigest()
    note = json.dumps({"accessor": accessor, "sha256": digest, "role": role})
    ok, _ = host.run_shell_command(
        f"chown {q(owner)}:{q(group)} {q(staged)} && chmod 600 {q(staged)} && "
        f"mv -f {q(staged)} {q(path)} && install -d -m 700 {q(str(Path(record).parent))} && "
        f"printf '%s\\n' {q(note)} > {q(record)} && chmod 600 {q(record)}")
    if not ok:
        revoke_accessor(admin, accessor)
        raise OperationError(f"could not install {path} on {host.name}")
    old = recorded.get("accessor")
    if old and old != accessor:
        revoke_accessor(admin, old)


@operation()
@_reported
def vault_seeded(vault: Session, seed_file: str):
    """The values of a seed file (on the control machine) written to KV where they differ.
    Only paths are ever printed.

    + vault: the run's Session
    + seed_file: control-machine path of the 0600 YAML file {path: {field: value}}
    """
    if _skip(vault, "Vault seed"):
        return
    if vault.usable():
        changed = seed_differs(vault.admin(), load_seed(seed_file))
        if not changed:
            host_noop(f"Vault: the {seed_file} values are in place")
            return
    yield FunctionCommand(_seed_at_run_time, (vault, seed_file), {})


def _seed_at_run_time(state, host, vault: Session, seed_file: str) -> None:
    if vault.skip_reason:
        return
    admin = vault.admin()
    seed = load_seed(seed_file)
    changed = seed_differs(admin, seed)
    write_seed(admin, seed, changed)
    if changed:
        host.log(f"Vault: wrote {', '.join(changed)}")


# -- PGP keys -------------------------------------------------------------------------------


def pgp_key_b64(path: Path | str) -> str:
    """A public key file (binary, or ASCII-armored as `gpg --export --armor` writes it) as
    the base64 of its binary form, which is what Vault's init takes."""
    raw = Path(path).expanduser().read_bytes()
    if not raw.lstrip().startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----"):
        return base64.b64encode(raw).decode()
    lines = raw.decode("ascii", "replace").splitlines()
    body, in_body = [], False
    for line in lines[1:]:
        if line.startswith("-----END"):
            break
        if not in_body:
            in_body = line.strip() == ""
            continue
        if line.startswith("="):  # the CRC24 checksum line
            continue
        body.append(line.strip())
    return base64.b64encode(base64.b64decode("".join(body))).decode()
