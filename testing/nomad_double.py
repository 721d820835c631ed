"""A Nomad test double: a real HTTP server on 127.0.0.1 speaking the parts of Nomad's
documented HTTP API (developer.hashicorp.com/nomad/api-docs) that the deploy uses. It is
not Nomad; tests that use it say so, and their twins run against a real Nomad at NOMAD_ADDR.

- GET  /v1/status/leader         the leader's RPC address, no token needed
- POST /v1/acl/bootstrap         the first management token; then 400 "ACL bootstrap
                                 already done (reset index: N)", as Nomad answers
- GET  /v1/acl/token/self        the caller's token; 403 "ACL token not found" otherwise
- POST /v1/jobs/parse            {"JobHCL", "Canonicalize"} -> the job as JSON (parsed here
                                 with python-hcl2 into the fields the deploy's job uses)
- POST /v1/job/:id/plan          {"Job", "Diff"} -> {"Diff": {"Type": None|Added|Edited},
                                 "JobModifyIndex": Nomad's copy's, 0 when none, ...}
- POST /v1/job/:id               register; with EnforceIndex, refused unless JobModifyIndex
                                 is the current one (0: the job must not exist), HTTP 500
                                 "Enforcing job modify index ...", as Nomad answers
- GET  /v1/job/:id               the registered job; 404 "job not found"
- Job and token endpoints need a management token in X-Nomad-Token once ACLs are
  bootstrapped: 403 "Permission denied" otherwise (Nomad errors are plain text).
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import hcl2
from hcl2.utils import SerializationOptions

# What Nomad sets on a registered job: never part of a plan's diff.
SERVER_FIELDS = {"CreateIndex", "ModifyIndex", "JobModifyIndex", "SubmitTime", "Status",
                 "Version", "Stable"}
ENFORCE = "Enforcing job modify index"


def parse_hcl(text: str) -> dict[str, Any]:
    """HCL as plain data: strings unquoted, blocks as lists of dicts keyed by label."""
    options = SerializationOptions(strip_string_quotes=True, explicit_blocks=False,
                                   with_comments=False)
    return hcl2.loads(text, serialization_options=options)


def _labelled(blocks) -> list[tuple[str, dict]]:
    return [(label, body) for block in blocks or [] for label, body in block.items()]


def _one(blocks) -> dict:
    return (blocks or [{}])[0]


def _task(name: str, body: dict) -> dict:
    resources = _one(body.get("resources"))
    return {
        "Name": name, "Driver": body.get("driver"), "User": body.get("user", ""),
        "Config": _one(body.get("config")), "Env": _one(body.get("env")) or None,
        "VolumeMounts": [{"Volume": m.get("volume"), "Destination": m.get("destination"),
                          "ReadOnly": bool(m.get("read_only", False))}
                         for m in body.get("volume_mount") or []] or None,
        "Resources": {"CPU": resources.get("cpu", 0 if "cores" in resources else 100),
                      "Cores": resources.get("cores", 0),
                      "MemoryMB": resources.get("memory", 300)},
        "KillTimeout": body.get("kill_timeout", "5s"),
    }


def job_from_hcl(text: str) -> dict[str, Any]:
    """The job JSON Nomad's parser gives for the job blocks the deploy writes."""
    jobs = _labelled(parse_hcl(text).get("job"))
    if len(jobs) != 1:
        raise ValueError(f"expected one job block, found {len(jobs)}")
    job_id, body = jobs[0]
    groups = []
    for name, group in _labelled(body.get("group")):
        restart, reschedule = _one(group.get("restart")), _one(group.get("reschedule"))
        groups.append({
            "Name": name, "Count": group.get("count", 1),
            "Constraints": [{"LTarget": c.get("attribute", ""), "RTarget": c.get("value", ""),
                             "Operand": c.get("operator", "=")}
                            for c in group.get("constraint") or []] or None,
            "RestartPolicy": {"Attempts": restart.get("attempts"),
                              "Interval": restart.get("interval"),
                              "Delay": restart.get("delay"), "Mode": restart.get("mode")},
            "ReschedulePolicy": {"Delay": reschedule.get("delay"),
                                 "DelayFunction": reschedule.get("delay_function"),
                                 "MaxDelay": reschedule.get("max_delay"),
                                 "Unlimited": reschedule.get("unlimited")},
            "Volumes": {v: {"Name": v, "Type": spec.get("type"), "Source": spec.get("source"),
                            "ReadOnly": bool(spec.get("read_only", False))}
                        for v, spec in _labelled(group.get("volume"))} or None,
            "Tasks": [_task(t, spec) for t, spec in _labelled(group.get("task"))],
        })
    return {"ID": job_id, "Name": job_id, "Namespace": "default",
            "Region": body.get("region", "global"), "Datacenters": body.get("datacenters"),
            "Type": body.get("type", "service"), "TaskGroups": groups}


def _spec(job: dict) -> dict:
    return {k: v for k, v in job.items() if k not in SERVER_FIELDS}


class NomadDouble:
    def __init__(self):
        self.index = 10  # Nomad's raft index: every write moves it on
        self.bootstrap_token: dict[str, Any] | None = None
        self.jobs: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.registers = 0
        self.bootstraps = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    def start(self) -> NomadDouble:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _answer(self, method: str):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                double.requests.append((method, self.path))
                with double._lock:
                    status, body = double.answer(method, self.path.split("?", 1)[0], raw,
                                                 self.headers.get("X-Nomad-Token"))
                # Nomad's errors are plain text; its answers JSON (the leader a JSON string).
                error = status >= 400
                payload = body.encode() if error else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8" if error
                                 else "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self._answer("GET")

            def do_POST(self):
                self._answer("POST")

            def do_PUT(self):
                self._answer("PUT")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    # -- the API --------------------------------------------------------------------------

    def _management(self, token: str | None) -> bool:
        return self.bootstrap_token is not None and token == self.bootstrap_token["SecretID"]

    def answer(self, method: str, path: str, raw: bytes, token: str | None):
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return 400, "failed to decode request body"
        if path == "/v1/status/leader" and method == "GET":
            return 200, "127.0.0.1:4647"
        if path == "/v1/acl/bootstrap" and method in ("POST", "PUT"):
            return self._bootstrap()
        if path == "/v1/acl/token/self" and method == "GET":
            if not self._management(token):
                return 403, "ACL token not found"
            return 200, self.bootstrap_token
        if not self._management(token):
            return 403, "Permission denied"
        if path == "/v1/jobs/parse" and method in ("POST", "PUT"):
            try:
                return 200, job_from_hcl(body.get("JobHCL") or "")
            except Exception as exc:  # Nomad answers a parse error with 400 and its text
                return 400, f"error parsing: {type(exc).__name__}: {str(exc)[:200]}"
        match = re.fullmatch(r"/v1/job/([^/]+)(/plan)?", path)
        if match is None:
            return 404, "Invalid URL"
        job_id, plan = match.groups()
        if method == "GET" and not plan:
            job = self.jobs.get(job_id)
            return (200, job) if job else (404, "job not found")
        if method not in ("POST", "PUT"):
            return 405, "Invalid method"
        job = body.get("Job")
        if not isinstance(job, dict):
            return 400, "Job must be specified"
        if job.get("ID") != job_id:
            return 400, "Job ID does not match name"
        return self._plan(job) if plan else self._register(job, body)

    def _bootstrap(self):
        if self.bootstrap_token is not None:
            return 400, f"ACL bootstrap already done (reset index: {self.bootstrap_index})"
        self.bootstraps += 1
        self.index += 1
        self.bootstrap_index = self.index
        self.bootstrap_token = {
            "AccessorID": str(uuid.uuid4()), "SecretID": str(uuid.uuid4()),
            "Name": "Bootstrap Token", "Type": "management", "Policies": None, "Global": True,
            "CreateIndex": self.index, "ModifyIndex": self.index}
        return 200, self.bootstrap_token

    def _plan(self, job: dict):
        have = self.jobs.get(job["ID"])
        if have is None:
            change = "Added"
        else:
            change = "None" if _spec(have) == _spec(job) else "Edited"
        return 200, {"Diff": {"Type": change, "ID": job["ID"], "Fields": None, "Objects": None,
                              "TaskGroups": None},
                     "JobModifyIndex": have["JobModifyIndex"] if have else 0,
                     "Annotations": {"DesiredTGUpdates": {}}, "FailedTGAllocs": None,
                     "CreatedEvals": None, "NextPeriodicLaunch": None, "Warnings": "",
                     "Index": self.index}

    def _register(self, job: dict, body: dict):
        have = self.jobs.get(job["ID"])
        if body.get("EnforceIndex"):
            wanted = int(body.get("JobModifyIndex") or 0)
            if have is not None and wanted == 0:
                return 500, f"{ENFORCE} 0: job already exists"
            if have is not None and wanted != have["JobModifyIndex"]:
                return 500, (f"{ENFORCE} {wanted}: job exists with conflicting job modify "
                             f"index: {have['JobModifyIndex']}")
            if have is None and wanted != 0:
                return 500, f"{ENFORCE} {wanted}: job does not exist"
        self.registers += 1
        self.index += 1
        stored = copy.deepcopy(_spec(job))
        stored.update({"CreateIndex": have["CreateIndex"] if have else self.index,
                       "ModifyIndex": self.index, "JobModifyIndex": self.index,
                       "Version": have["Version"] + 1 if have else 0, "Status": "pending",
                       "Stable": False})
        self.jobs[job["ID"]] = stored
        self.index += 1
        return 200, {"EvalID": str(uuid.uuid4()), "EvalCreateIndex": self.index,
                     "JobModifyIndex": stored["JobModifyIndex"], "Warnings": "",
                     "Index": self.index, "LastContact": 0, "KnownLeader": True}
