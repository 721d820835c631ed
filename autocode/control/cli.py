"""autocode task: give the platform work from the control machine, and get it back.

    autocode task submit --repo PATH|URL --prompt TEXT [--agent TYPE | --worker NAME]
                         [--budget USD] [--timeout S]
    autocode task list [--status S]... [--worker NAME] [--agent TYPE]   (cost: metered)
    autocode task show ID
    autocode task logs ID [--follow]
    autocode task fetch ID [--repo PATH]     the result as branch autocode/ID
    autocode task cancel ID
    autocode task retry ID                   a new task with the same spec

Every command takes --json (submit, show, cancel and retry print the task's record).

Where the service is: autocode-control.json (written by the deploy beside the inventory;
--control FILE or $AUTOCODE_CONTROL elsewhere), holding its URL, the platform CA, the
operator token's file, and the git remote that `submit --repo PATH` pushes to and `fetch`
fetches from (over the SSH access the deploy uses).

Exit status: 0 done; 1 the task ended other than succeeded (logs --follow); 2 bad usage or
input refused; 3 the service cannot be reached; 4 the token or the network was refused;
5 no such task; 6 not possible in the task's state (e.g. cancel an ended task).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from autocode.control.client import ControlError, OperatorClient

EXIT_OK, EXIT_TASK, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_NOT_FOUND, \
    EXIT_CONFLICT = range(7)
ENDED = ("succeeded", "failed", "cancelled", "interrupted", "refused_budget")
ENDPOINT_FILE = "autocode-control.json"


class UsageError(Exception):
    pass


class Endpoint:
    """autocode-control.json: paths in it are relative to the file."""

    def __init__(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"{path} not found: apply the deploy (it writes it beside the "
                             "inventory), or pass --control FILE") from None
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: cannot read it ({exc})") from None
        missing = [k for k in ("url", "ca_cert", "token_file") if not data.get(k)]
        if missing:
            raise UsageError(f"{path}: {', '.join(missing)} missing; apply the deploy again")
        here = path.parent

        def beside(value: str) -> Path:
            return (here / value) if not Path(value).is_absolute() else Path(value)

        self.url = str(data["url"])
        self.ca_cert = beside(data["ca_cert"])
        self.token_file = beside(data["token_file"])
        self.git_remote = data.get("git_remote")
        self.git_ssh_command = data.get("git_ssh_command")
        self.receive_pack = data.get("receive_pack")
        self.upload_pack = data.get("upload_pack")

    def token(self) -> str:
        """The deploy's token file: JSON {"operator_token": ...}, 0600 (infra/control.py)."""
        try:
            mode = self.token_file.stat().st_mode
            doc = json.loads(self.token_file.read_text())
        except OSError as exc:
            raise UsageError(f"operator token {self.token_file}: cannot read it "
                             f"({exc.strerror})") from None
        except ValueError:
            raise UsageError(f"operator token {self.token_file}: not the deploy's JSON; "
                             "restore it, or delete it and apply the deploy again") from None
        if mode & 0o077:
            raise UsageError(f"operator token {self.token_file}: open to other users (mode "
                             f"{mode & 0o777:04o}); chmod 600 it, and if anyone else may have "
                             "read it, delete it and apply the deploy again (a new token)")
        token = doc.get("operator_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise UsageError(f"operator token {self.token_file}: holds no operator_token; "
                             "delete it and apply the deploy again")
        return token

    def client(self) -> OperatorClient:
        return OperatorClient(self.url, self.ca_cert, token=self.token())

    def git(self, repo: Path, *args: str) -> str:
        if not self.git_remote:
            raise UsageError("autocode-control.json names no git_remote; apply the deploy again")
        env = dict(os.environ)
        if self.git_ssh_command:
            env["GIT_SSH_COMMAND"] = self.git_ssh_command
        run = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                             env=env)
        if run.returncode != 0:
            raise UsageError(f"git {args[0]} failed: {run.stderr.strip()[-1000:]}")
        return run.stdout.strip()

    def remote(self, repo_name: str) -> str:
        return f"{self.git_remote.rstrip('/')}/{repo_name}.git"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autocode", description=__doc__.split("\n")[0])
    parser.add_argument("--control", type=Path, default=None,
                        help=f"the service's {ENDPOINT_FILE} (default: beside the inventory)")
    top = parser.add_subparsers(dest="area", required=True, metavar="AREA")
    task = top.add_parser("task", help="submit and follow tasks")
    commands = task.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str, with_id: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text)
        if with_id:
            sub.add_argument("id", help="the task's id")
        sub.add_argument("--json", action="store_true", help="print JSON")
        return sub

    submit = command("submit", "queue a task", with_id=False)
    submit.add_argument("--repo", required=True,
                        help="a local git repository (its HEAD is pushed) or an https:// URL")
    submit.add_argument("--prompt", required=True, help="what the agent should do")
    submit.add_argument("--agent", help="agent type: any worker of that type may run it")
    submit.add_argument("--worker", help="this worker, and no other")
    submit.add_argument("--budget", help="USD the task may spend (default: the inventory's)")
    submit.add_argument("--timeout", type=float, help="seconds the agent may run")
    listing = command("list", "the tasks, newest first", with_id=False)
    listing.add_argument("--status", action="append", default=[])
    listing.add_argument("--worker")
    listing.add_argument("--agent")
    listing.add_argument("--limit", type=int, default=50)
    command("show", "everything of one task")
    logs = command("logs", "the agent's output")
    logs.add_argument("--follow", "-f", action="store_true", help="until the task ends")
    fetch = command("fetch", "the result as branch autocode/ID")
    fetch.add_argument("--repo", type=Path, default=Path("."),
                       help="the local repository to fetch into (default: here)")
    command("cancel", "stop a task")
    command("retry", "a new task with the same spec")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        endpoint = Endpoint(_endpoint_path(args.control))
        return COMMANDS[args.command](endpoint, args)
    except UsageError as exc:
        print(f"autocode: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ControlError as exc:
        print(f"autocode: {exc}", file=sys.stderr)
        return _exit_for(exc)
    except BrokenPipeError:
        # Read by `head` or a pager that quit: the reader has what it wanted. Python's
        # advice: point stdout at devnull so the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _endpoint_path(given: Path | None) -> Path:
    if given is not None:
        return given
    if os.environ.get("AUTOCODE_CONTROL"):
        return Path(os.environ["AUTOCODE_CONTROL"])
    inventory = os.environ.get("AUTOCODE_INVENTORY")
    return (Path(inventory).parent if inventory else Path.cwd()) / ENDPOINT_FILE


def _exit_for(error: ControlError) -> int:
    if error.status == 0:
        return EXIT_UNREACHABLE
    return {401: EXIT_REFUSED, 403: EXIT_REFUSED, 404: EXIT_NOT_FOUND,
            409: EXIT_CONFLICT}.get(error.status, EXIT_USAGE)


def _print(args, record: Any, text: str) -> None:
    print(json.dumps(record, indent=2) if args.json else text)


# -- the commands --------------------------------------------------------------------------


def _submit(endpoint: Endpoint, args) -> int:
    spec: dict[str, Any] = {"prompt": args.prompt, "agent_type": args.agent,
                            "worker": args.worker, "timeout_s": args.timeout}
    if args.budget is not None:
        spec["budget_usd"] = args.budget
    client = endpoint.client()
    if args.repo.startswith("https://"):
        spec["repo"] = args.repo
    else:
        path = Path(args.repo).expanduser()
        spec["repo"], spec["base_commit"] = _push_head(endpoint, client, path)
    record = client.submit({k: v for k, v in spec.items() if v is not None})
    pinned = f", worker {record['pinned_worker']}" if record["pinned_worker"] else ""
    _print(args, record, f"{record['id']} {record['status']} ({record['agent_type']}{pinned})")
    return EXIT_OK


def _push_head(endpoint: Endpoint, client: OperatorClient, path: Path) -> tuple[str, str]:
    """Pushes the repository's HEAD to the orchestrator; (repository name, commit)."""
    if not path.is_dir():
        raise UsageError(f"--repo {path}: no such folder; give a git repository or an https URL")
    probe = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise UsageError(f"--repo {path}: not a git repository (git init, commit, then submit)")
    head = subprocess.run(["git", "-C", str(path), "rev-parse", "--verify", "-q",
                           "HEAD^{commit}"], capture_output=True, text=True)
    if head.returncode != 0:
        raise UsageError(f"--repo {path}: the repository has no commit yet; commit first")
    commit = head.stdout.strip()
    name = re.sub(r"[^A-Za-z0-9._-]", "-", Path(probe.stdout.strip()).name).lstrip(".-_") or "repo"
    client.ensure_repo(name)
    push = ["push", "-q"]
    if endpoint.receive_pack:
        push.append(f"--receive-pack={endpoint.receive_pack}")
    # A ref per submitted commit keeps every base reachable, whatever the local branch does.
    endpoint.git(path, *push, endpoint.remote(name), f"{commit}:refs/autocode/bases/{commit}")
    return name, commit


def _list(endpoint: Endpoint, args) -> int:
    records = endpoint.client().list(status=args.status, worker=args.worker,
                                     agent_type=args.agent, limit=args.limit)
    if args.json:
        print(json.dumps(records, indent=2))
        return EXIT_OK
    rows = [("ID", "STATUS", "WORKER", "AGENT", "AGE", "COST")]
    for r in records:
        rows.append((r["id"], r["status"], r["worker"] or "-", r["agent_type"],
                     _age(r["age_s"]), _cost(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return EXIT_OK


def _show(endpoint: Endpoint, args) -> int:
    r = endpoint.client().get(args.id)
    result = r["result"] or {}
    lines = [f"{r['id']}: {r['status']}" + (f" ({r['reason']})" if r["reason"] else ""),
             f"  agent {r['agent_type']}, worker {r['worker'] or '-'}, budget "
             f"{r['spec']['budget_usd']} USD, reported cost {_cost(r)}",
             f"  repo {r['spec']['repo']} at {r['spec'].get('base_commit') or 'its HEAD'}",
             f"  prompt: {r['spec']['prompt'][:200]}"]
    metered = r.get("metered")
    if metered:
        models = ", ".join(f"{name} {m['calls']} call(s) {m['input_tokens']}+"
                           f"{m['output_tokens']} tokens {m['cost_usd']} USD"
                           for name, m in metered["models"].items())
        lines.append(f"  metered at the proxy: {metered['cost_usd']} USD over "
                     f"{metered['calls']} call(s)" + (f" ({models})" if models else ""))
    for host, seen in sorted((r.get("hosts") or {}).items()):
        refused = f", {seen['refused']} refused" if seen["refused"] else ""
        lines.append(f"  host {host}: {seen['requests']} request(s), {seen['bytes_sent']} B "
                     f"sent, {seen['bytes_received']} B received{refused}")
    if result.get("result_commit"):
        lines.append(f"  result: branch {result['branch']} at {result['result_commit']}, "
                     f"{result['files_changed']} file(s), +{result['lines_added']} "
                     f"-{result['lines_deleted']}")
    elif r["status"] in ENDED:
        lines.append("  result: no change")
    _print(args, r, "\n".join(lines))
    return EXIT_OK


FOLLOW_PATIENCE_S = 300.0  # how long --follow waits for a service that went away


def _logs(endpoint: Endpoint, args) -> int:
    client, offset, away_since = endpoint.client(), 0, None
    while True:
        try:
            data, offset, status = client.log(args.id, offset)
            away_since = None
        except ControlError as exc:
            # Following, a restart of the service is a pause, not the end.
            if not args.follow or exc.status != 0:
                raise
            now = time.monotonic()
            if away_since is None:
                away_since = now
                print(f"autocode: {exc}; waiting for it", file=sys.stderr)
            elif now - away_since > FOLLOW_PATIENCE_S:
                raise
            time.sleep(2.0)
            continue
        if data:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        if not args.follow or (status in ENDED and not data):
            break
        if not data:
            time.sleep(1.0)
    if args.follow:
        return EXIT_OK if status == "succeeded" else EXIT_TASK
    return EXIT_OK


def _fetch(endpoint: Endpoint, args) -> int:
    r = endpoint.client().get(args.id)
    result = r["result"] or {}
    if r["status"] not in ENDED:
        raise UsageError(f"task {args.id} is {r['status']}; fetch it once it has ended")
    if not result.get("result_commit"):
        raise UsageError(f"task {args.id} ended {r['status']} with no change to fetch")
    branch = result["branch"]
    fetch = ["fetch", "-q"]
    if endpoint.upload_pack:
        fetch.append(f"--upload-pack={endpoint.upload_pack}")
    endpoint.git(args.repo, *fetch, endpoint.remote(r["spec"]["result_repo"]),
                 f"+refs/heads/{branch}:refs/heads/{branch}")
    _print(args, {"id": r["id"], "branch": branch, "commit": result["result_commit"]},
           f"branch {branch} at {result['result_commit']} in {args.repo}")
    return EXIT_OK


def _cancel(endpoint: Endpoint, args) -> int:
    r = endpoint.client().cancel(args.id)
    _print(args, r, f"{r['id']} {r['status']}" +
           (" (cancel asked of its worker)" if r["cancel_requested"] else ""))
    return EXIT_OK


def _retry(endpoint: Endpoint, args) -> int:
    r = endpoint.client().retry(args.id)
    _print(args, r, f"{r['id']} {r['status']} (retry of {args.id})")
    return EXIT_OK


COMMANDS = {"submit": _submit, "list": _list, "show": _show, "logs": _logs, "fetch": _fetch,
            "cancel": _cancel, "retry": _retry}


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _cost(record: dict[str, Any]) -> str:
    """Metered at the proxy when the service knows it, else what the agent reported."""
    metered = record.get("metered_cost_usd") or (record.get("metered") or {}).get("cost_usd")
    if metered is not None:
        return f"{metered} USD"
    cost = (record.get("result") or {}).get("cost_usd")
    return "-" if cost is None else f"{cost} USD (reported)"


if __name__ == "__main__":
    sys.exit(main())
