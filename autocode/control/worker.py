"""The worker's side of the front door: claim a task from autocode-control, run it in a fresh
work tree at its exact commit, send the agent's output as it comes, and hand back the result
as a git branch and one report.

One task at a time: claim (long poll) -> fetch the base commit -> start -> the agent runs
(heartbeats renew the lease and carry a cancel back; the output is shipped every second)
-> commit what changed, push refs/heads/autocode/<task id> -> finish. A report the service
cannot take now (it is restarting) is retried until it can.

The work tree's git directory lives outside the work tree, under the run's folder: whatever
the agent writes in the tree (a .git of its own, hooks, config) is never what the worker's
own git commands read, and the worker's git never runs a hook.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from loguru import logger

from autocode.agents.base import AgentBinaryNotFoundError, HeadlessCliAgent
from autocode.agents.process import Terminated
from autocode.agents.types import CANCELLED, FAILED, INTERRUPTED, Task, TaskResult
from autocode.config import WorkerConfig
from autocode.control.client import ControlError, WorkerClient

CLAIM_WAIT_S = 25.0
LOG_CHUNK_BYTES = 256 * 1024
LOG_MAX_BYTES = 32 * 1024 * 1024  # past this the live log says so and stops growing
REPORT_RETRY_S = 6 * 3600.0
PUSH_RETRY_S = 600.0
LOG_FLUSH_PATIENCE_S = 60.0
GIT_TIMEOUT_S = 900.0


class GitError(RuntimeError):
    pass


def serve_from_orchestrator(config: WorkerConfig, agent: HeadlessCliAgent, *,
                            once: bool = False, max_tasks: int | None = None) -> int:
    assert config.orchestrator_url and config.control_ca
    client = WorkerClient(config.orchestrator_url, config.control_ca,
                          cert=config.control_cert or "", key=config.control_key or "")
    agent.resolve_binary()  # fail fast, before claiming anything
    logger.info("claiming tasks for {} (agent {}) from {}", config.worker_id, agent.kind,
                config.orchestrator_url)
    done, backoff = 0, 1.0
    while max_tasks is None or done < max_tasks:
        status = agent.check_budget()
        if not status.allowed:  # never claim a task this worker cannot pay for
            logger.warning("daily budget spent ({} of {} USD); not claiming",
                           status.spent_usd, status.daily_budget_usd)
            if once:
                return 3
            time.sleep(config.poll_interval_s)
            continue
        try:
            claimed = client.claim(wait_s=0 if once else CLAIM_WAIT_S)
            backoff = 1.0
        except ControlError as exc:
            logger.warning("cannot claim from {}: {}; again in {:.0f} s",
                           config.orchestrator_url, exc, backoff)
            if once:
                return 1
            time.sleep(backoff)
            backoff = min(backoff * 2, 30.0)
            continue
        if claimed is None:
            if once:
                break
            continue
        RemoteRun(config, agent, client, claimed).run()
        done += 1
    logger.info("stopped claiming after {} task(s)", done)
    return 0


@dataclass
class RemoteRun:
    config: WorkerConfig
    agent: HeadlessCliAgent
    client: WorkerClient
    record: dict[str, Any]
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def task_id(self) -> str:
        return self.record["id"]

    def run(self) -> None:
        spec = self.record["spec"]
        task_id = self.task_id
        run_dir = self.config.runs_dir / task_id
        workdir = self.config.projects_dir / task_id
        self.git = Git(run_dir / "git", workdir, self.config, task_id)
        logger.info("claimed task {} ({})", task_id, spec["repo"])
        self.log = LogShipper(self.client, task_id)
        heart = threading.Thread(target=self._heartbeats, daemon=True)
        try:
            shutil.rmtree(workdir, ignore_errors=True)  # a fresh tree, whatever was there
            workdir.mkdir(parents=True)
            if self.config.agent_user:
                reachable_by_others(self.config.artifacts_dir, workdir.parent)
            base = self.git.checkout(spec)
            self.client.start(task_id)
            heart.start()
            self.log.start()
            task = Task(task_id=task_id, prompt=spec["prompt"], workdir=workdir,
                        timeout_s=spec.get("timeout_s"),
                        max_cost_usd=Decimal(spec["budget_usd"]))
            result = self._execute(task)
            outcome = self._outcome(result, base, spec)
        except GitError as exc:
            outcome = {"status": FAILED, "reason": f"git: {exc}", "result": {}}
        except ControlError as exc:
            outcome = {"status": FAILED, "reason": f"autocode-control: {exc}", "result": {}}
        except BaseException as exc:  # SIGTERM (the worker stops) or a crash: say so, then go
            self.cancel.set()
            self.log.stop(patience_s=5)  # briefly: systemd waits only so long for a stop
            if isinstance(exc, Terminated):
                self._report(INTERRUPTED, "the worker was stopped while this task ran; not "
                             "re-run", {}, patience_s=10)
            else:
                self._report(FAILED, f"worker error: {type(exc).__name__}: {exc}", {},
                             patience_s=10)
            raise
        finally:
            self.cancel.set()
            self.log.stop()
        self._write_local_record(outcome)
        self._report(outcome["status"], outcome["reason"], outcome["result"])

    def _execute(self, task: Task) -> TaskResult:
        try:
            return self.agent.execute_task(task, cancel=self.cancel, on_output=self.log.add)
        except (AgentBinaryNotFoundError, Terminated):
            raise
        except Exception as exc:  # the worker must record the failure, not die with it
            logger.exception("task {} crashed in the worker", task.task_id)
            return TaskResult(task.task_id, self.agent.kind, FAILED,
                              error=f"worker error: {type(exc).__name__}: {exc}")

    def _outcome(self, result: TaskResult, base: str, spec: dict) -> dict[str, Any]:
        report = result.to_dict()
        report.pop("logs_path", None)  # a path on the worker says nothing to the operator
        report["base_commit"] = base
        report.update(self.git.commit_and_push(spec["prompt"]))
        status = result.status
        if self.cancel.is_set() and status == CANCELLED:
            reason = "cancelled by an operator"
        else:
            reason = result.error or ""
        return {"status": status, "reason": reason, "result": report}

    def _heartbeats(self) -> None:
        # At least four beats per lease, so one or two lost on the way do not cost the task,
        # and at most 3 s apart: a cancel rides on the answer, and reaches the agent so soon.
        lease_left = self.record.get("lease_expires_at", 0) - time.time()
        interval = min(max(1.0, lease_left / 4), 3.0)
        while not self.cancel.wait(interval):
            try:
                if self.client.heartbeat(self.task_id)["cancel"]:
                    logger.warning("task {}: cancel asked; stopping the agent", self.task_id)
                    self.cancel.set()
            except ControlError as exc:
                if exc.status in (403, 404, 409):  # not ours any more (lease ran out)
                    logger.warning("task {}: {}; stopping the agent", self.task_id, exc)
                    self.cancel.set()
                else:
                    logger.warning("task {}: heartbeat failed ({}); retrying", self.task_id, exc)

    def _report(self, status: str, reason: str, result: dict[str, Any],
                patience_s: float = REPORT_RETRY_S) -> None:
        deadline, pause = time.monotonic() + patience_s, 1.0
        while True:
            try:
                self.client.finish(self.task_id, status, reason, result)
                logger.info("task {} reported: {}", self.task_id, status)
                return
            except ControlError as exc:
                if exc.status in (403, 404, 409, 422) or time.monotonic() > deadline:
                    logger.error("task {}: the report ({}) was not taken: {}", self.task_id,
                                 status, exc)
                    return
                logger.warning("task {}: report failed ({}); again in {:.0f} s",
                               self.task_id, exc, pause)
                time.sleep(pause)
                pause = min(pause * 2, 10.0)

    def _write_local_record(self, outcome: dict[str, Any]) -> None:
        """The worker keeps its own copy, as for inbox tasks."""
        self.config.results_dir.mkdir(parents=True, exist_ok=True)
        path = self.config.results_dir / f"{self.task_id}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({
            "task_id": self.task_id, "worker_id": self.config.worker_id,
            "project_id": self.config.project_id, "source": "orchestrator",
            "finished_at": datetime.now(UTC).isoformat(), **outcome}, indent=2))
        os.replace(tmp, path)


class LogShipper:
    """The agent's output to the service, once a second, each chunk at its byte offset (a
    resent chunk is taken once)."""

    def __init__(self, client: WorkerClient, task_id: str) -> None:
        self.client, self.task_id = client, task_id
        self.buffer = bytearray()
        self.sent = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.full = False
        self.refused = False

    def add(self, chunk: bytes) -> None:
        with self.lock:
            if len(self.buffer) + len(chunk) <= LOG_MAX_BYTES:
                self.buffer += chunk
            elif not self.full:
                self.full = True
                self.buffer += b"\n[autocode: the live log stops here; the rest is on the worker]\n"

    def start(self) -> None:
        self.thread.start()

    def _send(self) -> bool:
        with self.lock:
            data = bytes(self.buffer[self.sent:self.sent + LOG_CHUNK_BYTES])
        if not data or self.refused:
            return True
        try:
            self.sent = self.client.log(self.task_id, self.sent, data)
            return True
        except ControlError as exc:
            if exc.status in (403, 404, 409, 413):  # it will take no more: stop sending
                logger.warning("task {}: the live log stops here: {}", self.task_id, exc)
                self.refused = True
                return True
            return False

    def _loop(self) -> None:
        while not self.stopping.wait(1.0):
            self._send()

    def stop(self, patience_s: float = LOG_FLUSH_PATIENCE_S) -> None:
        if self.stopping.is_set() or not self.thread.is_alive():
            return
        self.stopping.set()
        self.thread.join(10)
        # What is left, for a while (the service may be restarting); the record matters
        # more than the log, so not for long.
        deadline, pause = time.monotonic() + patience_s, 0.5
        while True:
            with self.lock:
                pending = self.sent < len(self.buffer)
            if not pending or self.refused or time.monotonic() > deadline:
                return
            if not self._send():
                time.sleep(pause)
                pause = min(pause * 2, 5.0)


class Git:
    """The task's repository: a git directory of the worker's own beside the work tree."""

    def __init__(self, git_dir: Path, work_tree: Path, config: WorkerConfig, task_id: str):
        self.git_dir, self.work_tree, self.task_id = git_dir, work_tree, task_id
        self.config = config
        self.control_url = f"{config.orchestrator_url.rstrip('/')}/v1/worker/git/{task_id}.git"
        self.branch = f"refs/heads/autocode/{task_id}"

    def _run(self, *args: str) -> str:
        prefix = self.config.orchestrator_url.rstrip("/") + "/"
        options = {
            "core.hooksPath": "/dev/null", "core.fsmonitor": "false", "core.bare": "false",
            "user.name": self.config.worker_id,
            "user.email": f"{self.config.worker_id}@autocode.invalid",
            # The client certificate only toward the service, never to a cloned forge.
            f"http.{prefix}.sslCert": str(self.config.control_cert),
            f"http.{prefix}.sslKey": str(self.config.control_key),
            f"http.{prefix}.sslCAInfo": str(self.config.control_ca),
        }
        command = ["git", f"--git-dir={self.git_dir}", f"--work-tree={self.work_tree}"]
        for key, value in options.items():
            command += ["-c", f"{key}={value}"]
        # Our own global file: safe.directory is read only from there (not from -c in this
        # git), and the tree may belong to the agent's account while it runs.
        global_config = self.git_dir.parent / "gitconfig"
        if not global_config.exists():
            global_config.write_text("[safe]\n\tdirectory = *\n")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CONFIG_NOSYSTEM": "1",
               "GIT_CONFIG_GLOBAL": str(global_config), "GIT_TERMINAL_PROMPT": "0",
               "LC_ALL": "C", "HOME": str(self.git_dir.parent)}
        # Not GIT_SSL_CAINFO: it would beat the service's CA given above.
        for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
            if name in os.environ:
                env[name] = os.environ[name]
        try:
            run = subprocess.run([*command, *args], capture_output=True, text=True, env=env,
                                 timeout=GIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise GitError(f"git {args[0]} ran past {GIT_TIMEOUT_S:.0f} s") from None
        if run.returncode != 0:
            raise GitError(f"git {args[0]} failed: {run.stderr.strip()[-1500:]}")
        return run.stdout.strip()

    def _push(self, refspec: str, patience_s: float = PUSH_RETRY_S) -> None:
        """A push the service could not take now (it is restarting) is tried again; one it
        refused is not."""
        deadline, pause = time.monotonic() + patience_s, 1.0
        while True:
            try:
                self._run("push", "-q", self.control_url, refspec)
                return
            except GitError as exc:
                if "rejected" in str(exc) or time.monotonic() > deadline:
                    raise
                logger.warning("task {}: push failed ({}); again in {:.0f} s", self.task_id,
                               str(exc)[-200:], pause)
                time.sleep(pause)
                pause = min(pause * 2, 10.0)

    def checkout(self, spec: dict[str, Any]) -> str:
        """The task's base commit in the work tree; returns its id."""
        shutil.rmtree(self.git_dir, ignore_errors=True)
        self.git_dir.parent.mkdir(parents=True, exist_ok=True)
        self._run("init", "-q")
        wanted = spec.get("base_commit")
        source = self.control_url if not spec["repo"].startswith("https://") else spec["repo"]
        # With its history: the agent may want it, and a shallow result could not be
        # pushed to the service (receive.shallowUpdate is off there).
        self._run("fetch", "-q", "--no-tags", source, wanted or "HEAD")
        base = self._run("rev-parse", "--verify", "FETCH_HEAD^{commit}")
        if wanted is not None and base != wanted:
            raise GitError(f"fetched {base}, not the task's base {wanted}")
        self._run("checkout", "-q", "--detach", "-f", base)
        return base

    def commit_and_push(self, prompt: str) -> dict[str, Any]:
        """Commits what the agent changed and pushes it as the task's branch."""
        self._run("add", "-A")
        changed = self._run("diff", "--cached", "--numstat")
        if not changed:
            return {"result_commit": None, "branch": None, "files_changed": 0,
                    "lines_added": 0, "lines_deleted": 0}
        title = " ".join(prompt.split())[:60]
        self._run("commit", "-q", "--no-verify", "-m", f"autocode {self.task_id}: {title}",
                  "-m", prompt)
        commit = self._run("rev-parse", "HEAD")
        added = deleted = files = 0
        for line in changed.splitlines():
            plus, minus, _ = line.split("\t", 2)
            files += 1
            added += int(plus) if plus.isdigit() else 0  # "-" for a binary file
            deleted += int(minus) if minus.isdigit() else 0
        self._push(f"HEAD:{self.branch}")
        return {"result_commit": commit, "branch": self.branch.removeprefix("refs/heads/"),
                "files_changed": files, "lines_added": added, "lines_deleted": deleted}


def reachable_by_others(*folders: Path) -> None:
    """Traversable (o+x), never listable, by the agent's account: it reaches its own work
    tree, handed to it for the run; the worker's other folders (its git directories, run
    logs, results) keep their own modes, closed to it."""
    for folder in folders:
        mode = folder.stat().st_mode & 0o7777
        if not mode & 0o001:
            folder.chmod(mode | 0o001)
