"""Nomad's own state (its ACLs bootstrapped, the gossip key, the registered jobs) read
through its HTTP API from the control machine, and changed only where it differs: the
pattern of infra/vault.py.

Two layers:
- plain functions over `NomadAPI` (ACL bootstrap, job plan and register), which the unit
  tests run against the Nomad double (testing/nomad_double.py) and against a real Nomad
  when NOMAD_ADDR names one;
- pyinfra operations over them. At plan time an operation reads the state; when it is
  converged it reports no change, when it differs it yields a Python callback that reads
  again and changes what differs at run time. When Nomad cannot be read at plan time (not
  installed yet, starting, restarting in this run) the callback does all of it. pyinfra 3
  runs an operation's generator again when it executes it (with -y, only then), so each
  reading is made again there and a job changed in between is planned anew.

The management token and the gossip key never appear in a callback's arguments (pyinfra
prints them at -vv), in a command line, in an exception message or in a log line: they
travel only in API headers and bodies, in the 0600 keys file on the control machine, and
in the server's 0640 configuration file.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyinfra import host as current_host
from pyinfra.api import FunctionCommand, OperationError, operation

from . import keys_file
from .control_api import ServiceSession, per_stage, reported
from .nomad_api import NomadAPI, NomadAPIError

log = logging.getLogger("pyinfra")

# Nomad's refusal of a register whose EnforceIndex no longer holds (HTTP 500, plain text).
ENFORCE_INDEX_PREFIX = "Enforcing job modify index"


class NomadSetupError(OperationError):
    """A problem the operator has to act on; the message says what to do."""


class KeysFile(keys_file.KeysFile):
    """The ACL bootstrap (management) token and the servers' gossip encryption key: JSON,
    0600, on the control machine only."""

    field = "nomad_keys_file"
    holds = "Nomad's management token and gossip key"
    if_read = (", and replace both (README, 'Resetting Nomad's ACL bootstrap') if anyone "
               "else may have read it")
    error = NomadSetupError


def new_gossip_key() -> str:
    """32 random bytes, base64: the AES-256 key `nomad operator gossip keyring generate`
    makes."""
    return base64.b64encode(os.urandom(32)).decode()


def kept_token(keys: KeysFile) -> str | None:
    return ((keys.load() or {}).get("acl_bootstrap") or {}).get("secret_id")


# -- lifecycle over the API -----------------------------------------------------------------


def wait_for_leader(api: NomadAPI, seconds: float = 60.0) -> None:
    """Until the server answers and has elected itself (a single server does so a moment
    after it starts); ACL bootstrap and job registration need a leader."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if api.leader():
                return
        except NomadAPIError as exc:
            if time.monotonic() > deadline:
                raise NomadSetupError(
                    f"Nomad's API at {api.url} did not answer with a leader within "
                    f"{seconds:.0f} s ({exc}); check nomad.service on the orchestrator "
                    "(journalctl -u nomad) and that the control machine reaches "
                    "nomad_http_port, or set nomad_api_url") from None
        time.sleep(0.5)


def already_bootstrapped_message(url: str, path: Path, had_token: bool) -> str:
    held = "a management token Nomad does not accept" if had_token else "no management token"
    return (f"Nomad at {url} has its ACLs bootstrapped already, but {path} holds {held}. "
            "Restore the keys file from your copy, or reset the bootstrap (README, "
            "'Resetting Nomad's ACL bootstrap': the reset index that `nomad acl bootstrap` "
            "reports goes into <nomad data folder>/server/acl-bootstrap-reset on the server) "
            "and apply again. Nothing was changed")


def bootstrap_acl(api: NomadAPI, keys: KeysFile) -> str:
    """The deploy's management token: the one in the keys file while Nomad accepts it;
    otherwise the ACL system bootstrapped (once per cluster) and its token saved to the keys
    file before anything else uses it."""
    doc = keys.load() or {}
    token = (doc.get("acl_bootstrap") or {}).get("secret_id")
    if token and api.with_token(token).token_self():
        return token
    try:
        answer = api.bootstrap_acl() or {}
    except NomadAPIError as exc:
        if exc.status == 400 and "already done" in exc.detail:
            raise NomadSetupError(already_bootstrapped_message(api.url, keys.path,
                                                               bool(token))) from None
        raise
    if not answer.get("SecretID"):
        raise NomadSetupError(f"Nomad at {api.url} answered the ACL bootstrap without a token")
    # A token here that Nomad did not know belonged to a cluster whose state is gone.
    doc["acl_bootstrap"] = {"accessor_id": answer.get("AccessorID"),
                            "secret_id": answer["SecretID"]}
    doc["nomad_addr"] = api.url
    doc["bootstrapped_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    keys.save(doc)
    return answer["SecretID"]


@dataclass(frozen=True)
class JobPlan:
    job: dict[str, Any]  # the job as Nomad parsed it
    change: str  # the plan's Diff.Type: None, Added, Edited (Deleted is not asked for)
    index: int  # JobModifyIndex of Nomad's copy when planned; 0 when there is none

    @property
    def differs(self) -> bool:
        return self.change != "None"


def plan_job(api: NomadAPI, hcl: str) -> JobPlan:
    """Parse the job specification with Nomad's own parser, and plan it against the job
    Nomad has."""
    job = api.parse(hcl) or {}
    if not job.get("ID"):
        raise NomadSetupError(f"Nomad at {api.url} parsed the job specification into a job "
                              "without an ID")
    answer = api.plan(job) or {}
    change = (answer.get("Diff") or {}).get("Type") or "Added"
    return JobPlan(job=job, change=change, index=int(answer.get("JobModifyIndex") or 0))


def register_job(api: NomadAPI, plan: JobPlan) -> dict[str, Any]:
    """Register the planned job only over the version it was planned against."""
    try:
        return api.register(plan.job, plan.index) or {}
    except NomadAPIError as exc:
        if ENFORCE_INDEX_PREFIX in exc.detail:
            raise NomadSetupError(
                f"job {plan.job['ID']} changed in Nomad after this apply planned it "
                f"(planned against JobModifyIndex {plan.index}; Nomad: {exc.detail}): someone "
                "else registered it meanwhile. Nothing was registered; apply again to plan "
                "against the version Nomad has now") from None
        raise


def converge_job(api: NomadAPI, hcl: str) -> JobPlan | None:
    """The job registered when its plan shows a difference; the plan when it was, None
    when Nomad has it as wanted."""
    plan = plan_job(api, hcl)
    if not plan.differs:
        return None
    register_job(api, plan)
    return plan


# -- the session the operations share -------------------------------------------------------


@dataclass
class Session(ServiceSession):
    """What the deploy knows of Nomad in this run: where its API is, the CA to verify it by
    (None without TLS), the keys file, whether it answered at plan time, and the gossip
    key of this run. One per run, shared by all hosts."""

    answering: bool | None = None
    _gossip_key: str | None = field(default=None, repr=False)

    def api(self) -> NomadAPI:
        return NomadAPI(self.url, self.ca_pem)

    def answers(self) -> bool:
        """At plan time: Nomad answers with a leader (read once per run)."""
        if self.answering is None:
            try:
                self.answering = bool(self.plan_time_ca() and self.api().leader())
            except NomadAPIError:
                self.answering = False
        return self.answering

    def admin(self) -> NomadAPI:
        token = kept_token(self.keys)
        if not token:
            raise NomadSetupError(f"no management token for Nomad in {self.keys.path}: the "
                                  "ACL bootstrap did not run or its token was lost; restore "
                                  "the keys file (README, 'Resetting Nomad's ACL bootstrap')")
        return self.api().with_token(token)

    def gossip_key(self) -> str:
        """The keys file's; when it has none, one made for this run, which
        `nomad_gossip_key_kept` saves there before any host gets it."""
        if self._gossip_key is None:
            self._gossip_key = (self.keys.load() or {}).get("gossip_key") or new_gossip_key()
        return self._gossip_key


def session(state, orchestrator, url: str, keys_path: Path, ca_path: str | None) -> Session:
    return per_stage(state, "nomad", lambda: Session(
        url=url, keys=KeysFile(keys_path), orchestrator=orchestrator, ca_path=ca_path))


# -- operations -----------------------------------------------------------------------------


_reported = reported(NomadAPIError, NomadSetupError)


@operation()
def nomad_gossip_key_kept(nomad: Session):
    """The servers' gossip encryption key in the keys file: made once, on the control
    machine, and saved there before the configuration that holds it is written.

    + nomad: the run's Session
    """
    if (nomad.keys.load() or {}).get("gossip_key"):
        current_host.noop(f"Nomad's gossip key is kept in {nomad.keys.path}")
        return
    yield FunctionCommand(_keep_gossip_key, (nomad,), {})


def _keep_gossip_key(state, host, nomad: Session) -> None:
    doc = nomad.keys.load() or {}
    have = doc.get("gossip_key")
    if have and have != nomad.gossip_key():
        raise NomadSetupError(f"{nomad.keys.path} got another gossip key while this apply ran "
                              "(a second apply at the same time?); apply again")
    if not have:
        doc["gossip_key"] = nomad.gossip_key()
        nomad.keys.save(doc)
        host.log(f"Nomad's gossip key made; it is kept in {nomad.keys.path} (0600)")


@operation()
@_reported
def nomad_acl_bootstrapped(nomad: Session, restarted: tuple = ()):
    """Nomad's ACL system bootstrapped once, its management token in the keys file, and
    that token still accepted.

    + nomad: the run's Session
    + restarted: operations that (re)start the server in this run
    """
    if not nomad.answers() or any(op.changed for op in restarted):
        yield FunctionCommand(_acl_at_run_time, (nomad,), {})
        return
    token = kept_token(nomad.keys)
    if token and nomad.api().with_token(token).token_self():
        current_host.noop(f"Nomad's ACLs are bootstrapped; {nomad.keys.path} holds the token")
        return
    yield FunctionCommand(_acl_at_run_time, (nomad,), {})


def _acl_at_run_time(state, host, nomad: Session) -> None:
    try:
        nomad.ca_at_run_time()
        api = nomad.api()
        wait_for_leader(api)
        had = kept_token(nomad.keys)
        if bootstrap_acl(api, nomad.keys) != had:
            host.log(f"Nomad's ACLs bootstrapped; the management token is in {nomad.keys.path} "
                     "(0600)")
    except NomadAPIError as exc:
        raise NomadSetupError(str(exc)) from None


@operation()
@_reported
def nomad_job_registered(nomad: Session, job_id: str, hcl: str):
    """A job registered as `hcl` specifies it, through Nomad's own parse and plan: nothing
    is registered when the plan shows no difference, and a register only replaces the
    version it was planned against (EnforceIndex).

    + nomad: the run's Session
    + job_id: the job's ID, for messages
    + hcl: the job specification
    """
    if nomad.answers() and kept_token(nomad.keys):
        plan = plan_job(nomad.admin(), hcl)
        if not plan.differs:
            current_host.noop(f"Nomad job {job_id} is as wanted (JobModifyIndex {plan.index})")
            return
    yield FunctionCommand(_job_at_run_time, (nomad, job_id, hcl), {})


def _job_at_run_time(state, host, nomad: Session, job_id: str, hcl: str) -> None:
    try:
        if nomad.ca_pem is None:
            nomad.ca_at_run_time()
        api = nomad.admin()
        wait_for_leader(api)
        plan = converge_job(api, hcl)
        if plan is not None:
            host.log(f"Nomad job {job_id} registered ({plan.change.lower()})")
    except NomadAPIError as exc:
        raise NomadSetupError(str(exc)) from None
