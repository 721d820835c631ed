"""autocode-control's HTTP API: two FastAPI apps on two listeners.

- The operator app (`autocode task ...` on the control machine): token in
  `Authorization: Bearer`, only from `management_networks`.
- The worker app: mutual TLS with the platform CA; a worker is the name in its client
  certificate, taken only from that worker's own inventory address.

Each app describes itself at /openapi.json (and /docs). Errors are JSON with `error` and,
where one applies, `field` and `fix`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import subprocess
from decimal import Decimal
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from autocode.budget import BudgetLedger
from autocode.control import git
from autocode.control.config import ControlConfig
from autocode.control.running import is_over_budget, read_task_traffic
from autocode.control.store import (
    ENDED,
    STATES,
    WORKER_ENDINGS,
    LogFull,
    NotYourTask,
    TaskNotFound,
    TaskStore,
    TransitionRefused,
)

TOKEN_FIX = ("send the operator token kept 0600 beside the inventory "
             "(autocode-control.token) as 'Authorization: Bearer <token>'")
REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
COMMIT = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?\Z")
FIELD_FIXES = {"budget_usd": "a positive amount in USD, e.g. 2",
               "timeout_s": "seconds, from 1 to 604800 (a week), or leave it out",
               "prompt": "say what the agent should do, as a string"}


class Refusal(Exception):
    def __init__(self, status: int, error: str, field: str = "", fix: str = "",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.field, self.fix = status, error, field, fix
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": self.error}
        if self.field:
            body["field"] = self.field
        if self.fix:
            body["fix"] = self.fix
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# -- bodies -----------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskSpec(_Body):
    """A task as submitted. Either `agent_type` (any worker of that type) or `worker`."""

    prompt: str = Field(description="what the agent is asked to do")
    repo: str = Field(description="a repository pushed to the orchestrator (its name) or an "
                                  "https:// URL the workers may clone")
    base_commit: str | None = Field(None, description="the commit to start from; required "
                                                      "for a pushed repository")
    agent_type: str | None = None
    worker: str | None = None
    budget_usd: Decimal | None = Field(None, description="cap on the task's metered spend")
    timeout_s: float | None = Field(None, ge=1, le=7 * 86400)


class WorkerEnd(_Body):
    status: str
    reason: str = ""
    result: dict[str, Any] = {}


# -- the pieces both apps share ---------------------------------------------------------------


class BodyLimit:
    """Refuses a request body over `limit` bytes with 413, whether it says its length or
    streams it, before the app reads it all."""

    def __init__(self, app, limit: int, larger: dict[str, int] | None = None) -> None:
        self.app, self.default_limit, self.larger = app, limit, larger or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = next((n for prefix, n in self.larger.items()
                      if scope["path"].startswith(prefix)), self.default_limit)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await _too_large(limit)(scope, receive, send)
        seen, responded = 0, False

        async def send_once(message):
            if not responded:
                await send(message)

        async def limited():
            nonlocal seen, responded
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                if not responded:
                    responded = True  # whatever the app tries to answer after this is dropped
                    await _too_large(limit)(scope, receive, send)
                raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, limited, send_once)
        except _BodyTooLarge:
            pass


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"error": f"request body over {limit} bytes",
                         "fix": "send less (max_body_bytes in control.yaml sets the bound)"},
                        status_code=413)


def _app(title: str) -> FastAPI:
    app = FastAPI(title=title, version="1")

    @app.exception_handler(Refusal)
    async def refused(request: Request, exc: Refusal):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = []
        status = 422
        for item in exc.errors():
            if item["type"] == "json_invalid":
                status = 400
            location = [str(p) for p in item["loc"] if p != "body"]
            problems.append({"field": ".".join(location), "problem": item["msg"]})
        first = problems[0] if problems else {"field": "", "problem": "invalid request"}
        error = "the body is not valid JSON" if status == 400 else first["problem"]
        fix = FIELD_FIXES.get(first["field"], "see /openapi.json for the request's shape")
        return JSONResponse({"error": error, "field": first["field"], "problems": problems,
                             "fix": fix}, status_code=status)

    @app.exception_handler(TaskNotFound)
    async def not_found(request: Request, exc: TaskNotFound):
        return Refusal(404, str(exc), "id", "autocode task list shows the ids").response()

    @app.exception_handler(TransitionRefused)
    async def conflict(request: Request, exc: TransitionRefused):
        return Refusal(409, str(exc)).response()

    @app.exception_handler(NotYourTask)
    async def not_yours(request: Request, exc: NotYourTask):
        return Refusal(403, str(exc)).response()

    return app


def _client_address(request: Request) -> str:
    return request.client.host if request.client else ""


# -- operators --------------------------------------------------------------------------------


def operator_app(config: ControlConfig, store: TaskStore, token_sha256: str) -> FastAPI:
    app = _app("autocode-control (operators)")
    networks = [ipaddress.ip_network(n) for n in config.management_networks] or [
        ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]

    @app.middleware("http")
    async def only_management_networks(request: Request, call_next):
        try:
            address = ipaddress.ip_address(_client_address(request))
        except ValueError:
            address = None
        if address is None or not any(address in n for n in networks):
            return Refusal(403, f"{address} is not in management_networks",
                           "management_networks",
                           "reach the API from a management network, or add yours to "
                           "management_networks in the inventory").response()
        return await call_next(request)

    def operator(request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = hashlib.sha256(token.strip().encode()).hexdigest()
        if scheme.lower() != "bearer" or not token or not hmac.compare_digest(
                given, token_sha256):
            raise Refusal(401, "missing or wrong operator token", "Authorization", TOKEN_FIX,
                          headers={"WWW-Authenticate": 'Bearer realm="autocode-control"'})

    guarded = [Depends(operator)]

    @app.post("/v1/tasks", status_code=201, dependencies=guarded)
    def submit(spec: TaskSpec) -> dict[str, Any]:
        checked = _checked_spec(config, spec)
        ensure_bare_repo(config, checked["result_repo"])
        return store.submit(checked)

    @app.put("/v1/repos/{name}", status_code=204, dependencies=guarded)
    def ensure_repo(name: str) -> Response:
        """A bare repository for `autocode task submit --repo PATH` to push to."""
        if not REPO_NAME.match(name):
            raise Refusal(422, f"{name!r} is not a repository name", "name",
                          "letters, digits, '.', '_', '-', starting with a letter or digit")
        ensure_bare_repo(config, name)
        return Response(status_code=204)

    @app.get("/v1/tasks", dependencies=guarded)
    def list_tasks(status: Annotated[list[str], Query()] = [],  # noqa: B006 (FastAPI's way)
                   worker: str | None = None, agent_type: str | None = None,
                   limit: Annotated[int, Query(ge=1, le=10000)] = 200) -> list[dict[str, Any]]:
        unknown = [s for s in status if s not in STATES]
        if unknown:
            raise Refusal(422, f"unknown status {unknown[0]!r}", "status",
                          f"one of {', '.join(STATES)}")
        records = store.list(status=status, worker=worker, agent_type=agent_type, limit=limit)
        if config.metered_ledger is not None and config.metered_ledger.exists():
            ledger = BudgetLedger(config.metered_ledger, read_only=True)
            try:
                spent = ledger.spent_by_tasks([r["id"] for r in records])
            finally:
                ledger.close()
            for record in records:
                record["metered_cost_usd"] = str(spent.get(record["id"], Decimal(0)))
        return records

    @app.get("/v1/tasks/{task_id}", dependencies=guarded)
    def show(task_id: str) -> dict[str, Any]:
        record = store.get(task_id)
        if config.metered_ledger is not None:
            record["metered"] = metered_spend(config.metered_ledger, task_id)
        record["hosts"] = read_task_traffic(config.task_traffic_dir, task_id)
        return record

    @app.get("/v1/tasks/{task_id}/log", dependencies=guarded)
    def log(task_id: str, offset: Annotated[int, Query(ge=0)] = 0) -> Response:
        data, next_offset = store.read_log(task_id, offset)
        status = store.get(task_id)["status"]
        return Response(data, media_type="application/octet-stream",
                        headers={"X-Next-Offset": str(next_offset), "X-Task-Status": status})

    @app.post("/v1/tasks/{task_id}/cancel", dependencies=guarded)
    def cancel(task_id: str) -> dict[str, Any]:
        return store.cancel(task_id)

    @app.post("/v1/tasks/{task_id}/retry", status_code=201, dependencies=guarded)
    def retry(task_id: str) -> dict[str, Any]:
        return store.retry(task_id)

    return app


def _checked_spec(config: ControlConfig, spec: TaskSpec) -> dict[str, Any]:
    """The spec as stored, or a Refusal naming the field and the fix. Nothing is queued
    unless all of it is right."""
    prompt = spec.prompt.strip()
    if not prompt:
        raise Refusal(422, "the prompt is empty", "prompt", "say what the agent should do")
    if len(prompt) > config.max_prompt_chars:
        raise Refusal(422, f"the prompt has {len(prompt)} characters, over "
                           f"{config.max_prompt_chars}", "prompt", "shorten it")
    worker_names = sorted(config.workers)
    if spec.worker is not None and spec.worker not in config.workers:
        raise Refusal(422, f"no worker {spec.worker!r}", "worker",
                      f"one of {', '.join(worker_names) or '(no workers configured)'}")
    agent_type = spec.agent_type
    if spec.worker is not None:
        own = config.workers[spec.worker].agent_type
        if agent_type is not None and agent_type != own:
            raise Refusal(422, f"worker {spec.worker} runs {own}, not {agent_type}",
                          "agent_type", f"leave agent_type out, or pick a worker of {agent_type}")
        agent_type = own
    if agent_type is None:
        raise Refusal(422, "neither an agent type nor a worker", "agent_type",
                      f"one of {', '.join(config.agent_types()) or '(none configured)'}, "
                      "or a worker")
    if agent_type not in config.agent_types():
        raise Refusal(422, f"no worker runs agent type {agent_type!r}", "agent_type",
                      f"one of {', '.join(config.agent_types()) or '(none configured)'}")
    eligible = ([config.workers[spec.worker]] if spec.worker else
                [w for w in config.workers.values() if w.agent_type == agent_type])
    budget = config.default_budget_usd if spec.budget_usd is None else spec.budget_usd
    largest = max(w.daily_budget_usd for w in eligible)
    if not budget.is_finite() or budget <= 0:
        raise Refusal(422, f"budget {budget} is not a positive amount", "budget_usd",
                      "a positive amount in USD, e.g. 2")
    if budget > largest:
        whose = f"worker {spec.worker}" if spec.worker else f"every {agent_type} worker"
        raise Refusal(422, f"budget {budget} USD is over the daily budget of {whose} "
                           f"({largest} USD)", "budget_usd",
                      f"at most {largest}, or raise daily_budget_usd in the inventory")
    repo, base = spec.repo.strip(), spec.base_commit
    if repo.startswith("https://"):
        if base is not None and not COMMIT.match(base):
            raise Refusal(422, "base_commit is not a full commit id", "base_commit",
                          "40 hexadecimal digits (git rev-parse HEAD), or leave it out")
        if any(c.isspace() for c in repo) or "@" in repo.split("/", 3)[2]:
            raise Refusal(422, "the URL has spaces or credentials in it", "repo",
                          "https://host/owner/repo, without user or token")
        # The results of a cloned repository come back to one of its own here.
        result_repo = "url-" + hashlib.sha256(repo.encode()).hexdigest()[:16]
    elif REPO_NAME.match(repo):
        if base is None or not COMMIT.match(base):
            raise Refusal(422, "a pushed repository needs the full commit to start from",
                          "base_commit", "40 hexadecimal digits (git rev-parse HEAD)")
        if not (config.repos_dir / f"{repo}.git").is_dir():
            raise Refusal(422, f"no repository {repo!r} on the orchestrator", "repo",
                          "push it first (autocode task submit --repo PATH does)")
        result_repo = repo
    else:
        raise Refusal(422, f"{repo!r} is neither a pushed repository's name nor an https URL",
                      "repo", "a local path to autocode task submit, or https://host/owner/repo")
    return {"prompt": prompt, "repo": repo, "base_commit": base, "agent_type": agent_type,
            "worker": spec.worker, "budget_usd": str(budget), "timeout_s": spec.timeout_s,
            "result_repo": result_repo}


def metered_spend(ledger_path, task_id: str) -> dict[str, Any]:
    """The task's metered cost and tokens per model, from the proxy's ledger."""
    if not ledger_path.exists():
        return {"cost_usd": "0", "calls": 0, "models": {}}
    ledger = BudgetLedger(ledger_path, read_only=True)
    try:
        rows = ledger.charges_of_task(task_id)
    finally:
        ledger.close()
    total, models = Decimal(0), {}
    for row in rows:
        detail = row.get("detail") or {}
        model = models.setdefault(str(detail.get("model")), {
            "calls": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": Decimal(0)})
        model["calls"] += 1
        model["input_tokens"] += int(detail.get("input_tokens") or 0)
        model["output_tokens"] += int(detail.get("output_tokens") or 0)
        model["cost_usd"] += Decimal(row["amount_usd"])
        total += Decimal(row["amount_usd"])
    for model in models.values():
        model["cost_usd"] = str(model["cost_usd"])
    return {"cost_usd": str(total), "calls": len(rows), "models": models}


def ensure_bare_repo(config: ControlConfig, name: str) -> None:
    path = config.repos_dir / f"{name}.git"
    if not path.is_dir():
        subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True,
                       capture_output=True)


# -- workers ----------------------------------------------------------------------------------


def worker_app(config: ControlConfig, store: TaskStore) -> FastAPI:
    app = _app("autocode-control (workers)")

    def worker(request: Request) -> str:
        """The worker at this address, if its client certificate names it."""
        by_address = config.worker_at(_client_address(request))
        tls = request.scope.get("extensions", {}).get("tls", {})
        named = _common_name(tls.get("client_cert"))
        if by_address is None or named is None or named != by_address:
            raise Refusal(403, f"certificate {named!r} from {_client_address(request)} is not "
                               "that address's worker", "client certificate",
                          "each worker uses its own certificate from its own address")
        return by_address

    # A default, not an Annotated alias: this module's annotations are strings, which
    # FastAPI resolves in the module's namespace, not this function's.
    Worker = Depends(worker)

    @app.post("/v1/worker/claim")
    def claim(*, name: str = Worker, wait_s: Annotated[float, Query(ge=0, le=120)] = 0) -> Response:
        entry = config.workers[name]
        claim = store.wait_for_claim(name, entry.agent_type, min(wait_s, config.claim_wait_s))
        if claim is None:
            return Response(status_code=204)
        return JSONResponse(store.get(claim.task_id))

    @app.post("/v1/worker/tasks/{task_id}/start")
    def start(*, name: str = Worker, task_id: str) -> dict[str, Any]:
        return store.start(name, task_id)

    @app.post("/v1/worker/tasks/{task_id}/heartbeat")
    def heartbeat(*, name: str = Worker, task_id: str) -> dict[str, Any]:
        beat = store.heartbeat(name, task_id)
        if not beat["cancel"] and is_over_budget(config.over_budget_dir, task_id):
            store.cancel(task_id)  # the proxy refused a call for the task's budget: stop it
            beat["cancel"] = True
        return beat

    @app.post("/v1/worker/tasks/{task_id}/log")
    async def log(*, name: str = Worker, task_id: str, request: Request,
                  start: Annotated[int, Query(ge=0)]) -> dict[str, int]:
        data = await request.body()
        try:
            return {"length": store.append_log(name, task_id, start, data,
                                               config.max_log_bytes)}
        except LogFull as exc:
            raise Refusal(413, str(exc), "log", "the worker keeps the whole output") from None

    @app.post("/v1/worker/tasks/{task_id}/finish")
    def finish(*, name: str = Worker, task_id: str, end: WorkerEnd) -> dict[str, Any]:
        if end.status not in WORKER_ENDINGS:
            raise Refusal(422, f"unknown ending {end.status!r}", "status",
                          f"one of {', '.join(WORKER_ENDINGS)}")
        status, reason = end.status, end.reason
        if status != "succeeded" and is_over_budget(config.over_budget_dir, task_id):
            budget = store.get(task_id)["spec"]["budget_usd"]
            status, reason = "refused_budget", (
                f"its budget of {budget} USD is spent: the proxy refused its next model call"
                + (f" ({end.reason})" if end.reason else ""))
        return store.finish(name, task_id, status, reason, end.result)

    hooks = git.install_hooks(config.data_root / "control" / "hooks")

    @app.api_route("/v1/worker/git/{task_id}.git/{rest:path}", methods=["GET", "POST"],
                   include_in_schema=False)
    async def git_http(task_id: str, rest: str, request: Request, name: str = Worker):
        """git's smart HTTP for the repository of the task this worker holds: fetch it,
        push only refs/heads/autocode/<task id>."""
        query = request.url.query
        if not git.is_service(request.method, rest, query):
            raise Refusal(404, "not a git smart-HTTP request", "", "git fetch/push only")
        held = store.held_by(name)
        if held is None or held["id"] != task_id:
            raise NotYourTask(f"task {task_id!r} is not held by {name}")
        status, headers, body = await git.run_backend(
            repos_dir=config.repos_dir, repo=held["spec"]["result_repo"], rest=rest,
            method=request.method, query=query,
            content_type=request.headers.get("content-type", ""),
            content_length=request.headers.get("content-length"),
            content_encoding=request.headers.get("content-encoding", ""),
            git_protocol=request.headers.get("git-protocol", ""),
            body=request.stream(), worker=name, task_id=task_id, hooks_dir=hooks)
        return StreamingResponse(body, status_code=status, headers=dict(headers))

    return app


def _common_name(cert: dict | None) -> str | None:
    """The subject's CN of a certificate as ssl.getpeercert() gives it."""
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


__all__ = ["ENDED", "operator_app", "worker_app"]
