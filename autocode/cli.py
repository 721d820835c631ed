"""autocode-worker: run coding-agent tasks on a worker host.

    autocode-worker run    --config /etc/autocode/worker.yaml --task-file TASK.json
    autocode-worker serve  --config /etc/autocode/worker.yaml [--once] [--max-tasks N]
    autocode-worker budget --config /etc/autocode/worker.yaml [--json] [--write-report]
    autocode-worker check  --config /etc/autocode/worker.yaml
    autocode-worker cleanup --config /etc/autocode/worker.yaml [--dry-run]

`run`, `serve` and `check` take --agent-type to run another agent than the file's (the
Nomad job passes the client's ${meta.agent_type}). `check` validates the config and finds
the agent's CLI, touching nothing: the deploy runs it on a new worker.yaml before putting
it in place, so a bad value never reaches the running service.

Exit status: 0 success; 1 the task failed, timed out or was interrupted; 2 bad usage,
config or task file, or the agent CLI is not installed; 3 the daily budget is spent.

`serve` layout, under artifacts_dir (default <data_root>/worker-artifacts/<worker_id>):

    inbox/              task files (*.json) waiting; inbox_dir may be set elsewhere
    inbox/.claimed/     the task being run; claimed by an atomic rename from inbox/
    results/<id>.json   one result record per task; the task file beside it, <id>.task.json
    runs/<id>/          the agent's captured stdout, stderr tail and process record
    rejected/           task files that could not be run, each with <name>.reason.txt

Crash recovery: a task file still in inbox/.claimed/ at startup was running when the
worker stopped. It is NOT re-run: the agent may already have changed the working tree and
spent money. It gets a result record with status "interrupted" saying so; to run it again,
submit it under a new id. A task whose id already has a result is rejected, never re-run
silently.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loguru import logger

from autocode.agents.base import AgentBinaryNotFoundError, HeadlessCliAgent
from autocode.agents.factory import AgentFactory
from autocode.agents.process import Terminated
from autocode.agents.types import FAILED, INTERRUPTED, REFUSED_BUDGET, SUCCEEDED, Task, TaskResult
from autocode.budget import BudgetLedger
from autocode.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    TaskFileError,
    WorkerConfig,
    load_task_file,
    load_worker_config,
)
from autocode.control.worker import serve_from_orchestrator
from autocode.logging import configure_logging

EXIT_OK, EXIT_TASK_FAILED, EXIT_USAGE, EXIT_BUDGET = 0, 1, 2, 3
CLAIMED_DIR_NAME = ".claimed"


def _on_sigterm(signum, frame):
    raise Terminated()


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autocode-worker", description="Run coding-agent tasks on an autocode worker.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH,
                         help=f"worker.yaml (default {DEFAULT_CONFIG_PATH})")
        return sub

    def with_agent_type(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--agent-type", default=None, metavar="TYPE",
                         help="agent to run instead of the config's agent_type "
                              f"({', '.join(sorted(AgentFactory.AGENTS))})")
        return with_config(sub)

    run = with_agent_type(commands.add_parser("run", help="run one task file and exit"))
    run.add_argument("--task-file", type=Path, required=True, help="task JSON file")

    serve = with_agent_type(commands.add_parser("serve", help="run tasks from the inbox directory"))
    serve.add_argument("--once", action="store_true",
                       help="stop when the inbox is empty instead of waiting for more")
    serve.add_argument("--max-tasks", type=int, default=None, help="stop after N tasks")
    serve.add_argument("--poll-interval", type=float, default=None,
                       help="seconds between inbox scans (default: poll_interval_s)")

    budget = with_config(commands.add_parser("budget", help="show today's spend and budget"))
    budget.add_argument("--json", action="store_true", help="print JSON")
    budget.add_argument("--write-report", action="store_true",
                        help="also write today's JSON and CSV reports to financial/reports")

    with_agent_type(commands.add_parser(
        "check", help="validate the config and find the agent CLI; change nothing"))

    cleanup = with_config(commands.add_parser(
        "cleanup", help="remove finished tasks' work trees and run logs older than "
                        "cleanup_after_days; never a task that has no result or is running"))
    cleanup.add_argument("--dry-run", action="store_true", help="say what would go")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        config = load_worker_config(args.config, environ=dict(os.environ),
                                    agent_type=getattr(args, "agent_type", None))
    except ConfigError as exc:
        print(f"autocode-worker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "check":
        return _check(config)
    if args.command == "cleanup":
        return _cleanup(config, args.dry_run)
    # logs/workers: the seed's folder for worker logs, the one shipped from every worker.
    configure_logging("worker", config.logs_root, config.worker_id, config.project_id,
                      folder="workers")
    ledger = BudgetLedger.for_data_root(config.data_root, config.timezone)
    try:
        if args.command == "budget":
            return _budget(config, ledger, args)
        agent = AgentFactory.create_agent(config.agent_type, config.agent_config(), ledger)
        signal.signal(signal.SIGTERM, _on_sigterm)
        if args.command == "run":
            return _run_one(config, agent, args.task_file)
        return _serve(config, agent, args)
    except AgentBinaryNotFoundError as exc:
        logger.error("{}", exc)
        print(f"autocode-worker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Terminated:
        logger.warning("terminated by SIGTERM")
        return 128 + signal.SIGTERM
    finally:
        ledger.close()


# -- check ----------------------------------------------------------------------------

def _check(config: WorkerConfig) -> int:
    # No ledger, no logs, no folders: a check must leave the host as it found it.
    agent = AgentFactory.create_agent(config.agent_type, config.agent_config(),
                                      BudgetLedger.in_memory())
    try:
        binary = agent.resolve_binary()
    except AgentBinaryNotFoundError as exc:
        print(f"autocode-worker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"ok: worker {config.worker_id}, agent {config.agent_type} ({binary}), daily budget "
          f"{config.daily_budget_usd} USD")
    return EXIT_OK


# -- cleanup --------------------------------------------------------------------------

def _cleanup(config: WorkerConfig, dry_run: bool) -> int:
    """Finished tasks' work trees and run logs, once their result is older than
    cleanup_after_days. A task is finished when it has a result; one still claimed (running,
    or interrupted and not yet recorded) is never touched, nor a work tree outside the
    projects folder (a task's own `workdir`). Results and task files stay: they are the
    record."""
    cutoff = time.time() - config.cleanup_after_days * 86400
    claimed = set()
    for path in (config.inbox_dir / CLAIMED_DIR_NAME).glob("*.json"):
        claimed.add(path.stem)
        try:  # its id, which names its folders, may differ from its file's name
            claimed.add(str(json.loads(path.read_text()).get("id", path.stem)))
        except (OSError, ValueError, AttributeError):
            pass
    removed = kept = 0
    for result in sorted(config.results_dir.glob("*.json")):
        if result.name.endswith(".task.json"):
            continue
        task_id = result.stem
        if result.stat().st_mtime >= cutoff or task_id in claimed:
            kept += 1
            continue
        for folder in (config.projects_dir / task_id, config.runs_dir / task_id):
            # The id came from a file name: it must name a folder right inside, no further.
            if folder.parent.resolve() != folder.resolve().parent or not folder.is_dir():
                continue
            if not dry_run:
                shutil.rmtree(folder)
            removed += 1
    print(f"{'would remove' if dry_run else 'removed'} {removed} folder(s) of tasks finished "
          f"more than {config.cleanup_after_days:g} days ago; {kept} newer or running kept")
    return EXIT_OK


# -- budget ----------------------------------------------------------------------------

def _budget(config: WorkerConfig, ledger: BudgetLedger, args) -> int:
    status = ledger.check_budget(config.daily_budget_usd, config.worker_id)
    report = {"worker_id": config.worker_id, "agent_type": config.agent_type,
              "timezone": config.timezone, **status.to_dict()}
    if args.write_report:
        json_path, csv_path = ledger.write_daily_report(config.reports_dir)
        report["reports"] = [str(json_path), str(csv_path)]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{status.day} ({config.timezone}) worker {config.worker_id}: spent "
              f"{status.spent_usd} of {status.daily_budget_usd} USD, remaining "
              f"{status.remaining_usd} USD{'' if status.allowed else ' (budget spent)'}")
    return EXIT_OK


# -- run -------------------------------------------------------------------------------

def _run_one(config: WorkerConfig, agent: HeadlessCliAgent, task_file: Path) -> int:
    try:
        task = load_task_file(task_file, config)
    except TaskFileError as exc:
        print(f"autocode-worker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = _execute(agent, task)
    _write_result(config, task, result, task_file.name)
    print(json.dumps(result.to_dict(), indent=2))
    return _exit_code(result)


def _execute(agent: HeadlessCliAgent, task: Task) -> TaskResult:
    assert task.workdir is not None
    task.workdir.mkdir(parents=True, exist_ok=True)
    try:
        return agent.execute_task(task)
    except (AgentBinaryNotFoundError, Terminated):
        raise
    except Exception as exc:  # the worker must record the failure, not die with it
        logger.exception("task {} crashed in the worker", task.task_id)
        return TaskResult(task.task_id, agent.kind, FAILED,
                          error=f"worker error: {type(exc).__name__}: {exc}")


def _exit_code(result: TaskResult) -> int:
    if result.status == SUCCEEDED:
        return EXIT_OK
    return EXIT_BUDGET if result.status == REFUSED_BUDGET else EXIT_TASK_FAILED


def _write_result(config: WorkerConfig, task: Task, result: TaskResult, task_file: str) -> Path:
    config.results_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "task_id": task.task_id, "task_file": task_file,
        "worker_id": config.worker_id, "project_id": config.project_id,
        "finished_at": datetime.now(UTC).isoformat(), "result": result.to_dict(),
    }
    path = config.results_dir / f"{task.task_id}.json"
    _write_json_atomically(path, record)
    return path


def _write_json_atomically(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


# -- serve -----------------------------------------------------------------------------

def _serve(config: WorkerConfig, agent: HeadlessCliAgent, args) -> int:
    if config.claims_from_orchestrator:
        return serve_from_orchestrator(config, agent, once=args.once, max_tasks=args.max_tasks)
    claimed_dir = config.inbox_dir / CLAIMED_DIR_NAME
    for directory in (config.inbox_dir, claimed_dir, config.results_dir, config.rejected_dir):
        directory.mkdir(parents=True, exist_ok=True)
    agent.resolve_binary()  # fail fast, before claiming anything
    _recover_interrupted(config, claimed_dir)
    poll = args.poll_interval if args.poll_interval is not None else config.poll_interval_s
    logger.info("serving {} from {} (agent {})", config.worker_id, config.inbox_dir, agent.kind)

    done = 0
    while args.max_tasks is None or done < args.max_tasks:
        waiting = _waiting_tasks(config.inbox_dir)
        if not waiting:
            if args.once:
                break
            time.sleep(poll)
            continue
        status = agent.check_budget()
        if not status.allowed:
            logger.warning("daily budget spent ({} of {} USD); {} task(s) wait in the inbox",
                           status.spent_usd, status.daily_budget_usd, len(waiting))
            if args.once:
                return EXIT_BUDGET
            time.sleep(poll)
            continue
        claimed = claimed_dir / waiting[0].name
        try:
            os.rename(waiting[0], claimed)  # atomic: only one claimant wins
        except FileNotFoundError:
            continue  # someone else took it
        _serve_one(config, agent, claimed)
        done += 1
    logger.info("serve stopped after {} task(s)", done)
    return EXIT_OK


def _waiting_tasks(inbox: Path) -> list[Path]:
    entries = []
    for path in inbox.glob("*.json"):
        try:
            entries.append((path.stat().st_mtime, path.name, path))
        except FileNotFoundError:
            continue
    return [path for _, _, path in sorted(entries)]


def _serve_one(config: WorkerConfig, agent: HeadlessCliAgent, claimed: Path) -> None:
    try:
        task = load_task_file(claimed, config)
    except TaskFileError as exc:
        _reject(config, claimed, str(exc))
        return
    if (config.results_dir / f"{task.task_id}.json").exists():
        _reject(config, claimed, f"task id {task.task_id!r} already has a result; it is not "
                                 "run twice: submit it under a new id to run it again")
        return
    logger.info("claimed task {} from {}", task.task_id, claimed.name)
    try:
        result = _execute(agent, task)
    except AgentBinaryNotFoundError:
        os.rename(claimed, config.inbox_dir / claimed.name)  # not started: give it back
        raise
    _write_result(config, task, result, claimed.name)
    os.replace(claimed, config.results_dir / f"{task.task_id}.task.json")


def _recover_interrupted(config: WorkerConfig, claimed_dir: Path) -> None:
    for claimed in sorted(claimed_dir.glob("*.json")):
        try:
            task = load_task_file(claimed, config)
        except TaskFileError as exc:
            _reject(config, claimed, str(exc))
            continue
        result_path = config.results_dir / f"{task.task_id}.json"
        if not result_path.exists():
            result = TaskResult(
                task.task_id, config.agent_type, INTERRUPTED,
                error="the worker stopped while this task was running; it was not re-run "
                      "because the agent may already have changed the working tree and spent "
                      "budget; submit it under a new id to run it again")
            _write_result(config, task, result, claimed.name)
            logger.warning("task {} was interrupted by a worker stop; recorded as interrupted",
                           task.task_id)
        else:  # finished, but the worker stopped before tidying up
            logger.info("task {} had finished before the worker stopped", task.task_id)
        os.replace(claimed, config.results_dir / f"{task.task_id}.task.json")


def _reject(config: WorkerConfig, task_file: Path, reason: str) -> None:
    config.rejected_dir.mkdir(parents=True, exist_ok=True)
    target = config.rejected_dir / task_file.name
    if target.exists():
        target = target.with_name(f"{target.stem}.{time.time_ns()}{target.suffix}")
    os.replace(task_file, target)
    target.with_name(target.name + ".reason.txt").write_text(reason + "\n")
    logger.warning("rejected task file {}: {}", task_file.name, reason)


if __name__ == "__main__":
    sys.exit(main())
