"""A client of Nomad's HTTP API for the deploy on the control machine, over python-nomad:
read state, compare, write only what differs.

python-nomad's endpoint classes make the requests, over the shared session
(infra/http_api.py: TLS verified against the platform CA, no proxy, nothing from the
environment). The endpoint classes, not nomad.Nomad: that one reads NOMAD_ADDR,
NOMAD_TOKEN and client certificates from the environment, and the deploy says what it
talks to. Errors name the method, the path, the status and Nomad's own message (plain
text naming jobs and indexes), never a request body or a token. Every call is counted, so
a no-change re-apply can be measured.
"""

from __future__ import annotations

from typing import Any

import nomad.api
import requests

from .http_api import APIError, Client, unreachable


class NomadAPIError(APIError):
    service = "Nomad API"


class NomadAPI(Client):
    """
    + url: e.g. https://10.237.0.2:4646
    + ca_pem: the CA certificate(s) that signed the server's certificate, as PEM text;
      None trusts the system store
    + token: sent as X-Nomad-Token (an ACL token's SecretID)
    """

    calls = 0  # across every client of this process: the deploy's API-call count

    def _bind(self) -> None:
        # verify=True: python-nomad passes `verify` with every request (its default is
        # False); the session's adapter verifies against the CA given.
        settings = dict(address=self.url, token=self.token, timeout=self.timeout_s,
                        verify=True, session=self.session)
        self._acl = nomad.api.Acl(**settings)
        self._job = nomad.api.Job(**settings)
        self._jobs = nomad.api.Jobs(**settings)
        self._status = nomad.api.Status(**settings)

    def _call(self, method: str, path: str, send, *args, ok: tuple[int, ...] = ()):
        self.counted()
        try:
            return send(*args)
        except nomad.api.exceptions.BaseNomadException as exc:
            answer = exc.nomad_resp
            if isinstance(answer, requests.Response):
                if answer.status_code in ok:
                    return None
                raise NomadAPIError(method, path, answer.status_code,
                                    answer.text.strip()[:300] or answer.reason) from None
            raise NomadAPIError(method, path, None, unreachable(answer)) from None
        except ValueError:
            raise NomadAPIError(method, path, None, "answer is not JSON") from None

    def leader(self) -> str:
        """The RPC address of the region's leader; Nomad answers 500 while it has none."""
        return self._call("GET", "status/leader", self._status.leader.get_leader)

    def bootstrap_acl(self) -> dict[str, Any]:
        """The first management token; 400 "ACL bootstrap already done" once one exists."""
        return self._call("POST", "acl/bootstrap", self._acl.generate_bootstrap)

    def token_self(self) -> dict[str, Any] | None:
        """This client's token; None when Nomad does not know it (403)."""
        return self._call("GET", "acl/token/self", self._acl.get_self_token, ok=(403,))

    def parse(self, hcl: str) -> dict[str, Any]:
        """A job specification (HCL) as the job JSON the other job endpoints take."""
        return self._call("POST", "jobs/parse", self._jobs.parse, hcl, True)

    def plan(self, job: dict[str, Any]) -> dict[str, Any]:
        """The scheduler's dry run of registering `job`, with the diff against the job
        Nomad has (Diff.Type "None" when they are the same)."""
        return self._call("POST", f"job/{job['ID']}/plan", self._job.plan_job, job["ID"],
                          {"Job": job}, True)

    def register(self, job: dict[str, Any], index: int) -> dict[str, Any]:
        """Register `job` only if Nomad's copy is still at JobModifyIndex `index` (0: only
        if there is none); Nomad refuses it otherwise ("Enforcing job modify index")."""
        return self._call("POST", f"job/{job['ID']}", self._job.register_job, job["ID"],
                          {"Job": job, "EnforceIndex": True, "JobModifyIndex": index})

    def job(self, job_id: str) -> dict[str, Any] | None:
        return self._call("GET", f"job/{job_id}", self._job.get_job, job_id, ok=(404,))
