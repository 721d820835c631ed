"""Lab helpers for the worker log forwarding: lines logged by the worker runtime on a
worker, and the lines the orchestrator filed for it (tests/lab/test_logging.py and
test_reboot.py)."""

from __future__ import annotations

import json
import shlex
import time

from infra.inventory_file import group_defaults

WORKERS = group_defaults("workers")
LOGS = f"{WORKERS['data_root']}/logs"
VENV = f"{WORKERS['install_dir']}/venv"
AGENT = WORKERS["service_user"]


def log_as_worker(ssh, host: str, messages: list[str], worker_id: str | None = None) -> None:
    """Lines logged by the worker runtime's own logging set-up (autocode/logging.py), as
    the agent account, into the file the worker service writes."""
    code = ("import sys\n"
            "from loguru import logger\n"
            "from autocode.logging import configure_logging\n"
            f"configure_logging('worker', {LOGS!r}, worker_id={worker_id or host!r}, "
            "folder='workers', console=False)\n"
            "for line in sys.stdin.read().split():\n"
            "    logger.info(line)\n")
    ssh(host, f"cd / && runuser -u {AGENT} -- {VENV}/bin/python -c {shlex.quote(code)}",
        input="\n".join(messages) + "\n")


def received(ssh, orchestrator: str, folder: str, marker: str) -> list[str]:
    """The messages containing `marker` the orchestrator filed under `folder`, each line
    parsed as the JSON the worker wrote."""
    proc = ssh(orchestrator, f"cat {LOGS}/workers/{shlex.quote(folder)}/worker.log 2>/dev/null "
               f"| grep -F {shlex.quote(marker)} || true")
    return [json.loads(line)["record"]["message"] for line in proc.stdout.splitlines()
            if line.strip()]


def wait_for(predicate, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
