"""The front door's own costs, on this machine, with real processes:

1. submit-to-claim latency with idle workers: autocode-control running, 3 workers
   long-polling it (WorkerClient threads, as `autocode-worker serve` does), tasks submitted
   one at a time; the time from the submit's answer to the claim's (p50, p99).
2. a task through the front door against the same agent run on the worker directly
   (`autocode-worker run --task-file`), side by side: a stand-in agent CLI that sleeps
   --task-seconds and writes a file; the ratio of wall clocks and the overhead in seconds
   (claim, fetch, start, commit, push, report).

    python -m bench.control [--tasks 200] [--task-seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from autocode.control.client import ControlError
from testing.standins import make_standin
from tests.unit.control.conftest import WORKERS, write_config
from tests.unit.control.test_front_door import FrontDoor, env

SLEEPING_AGENT = """
seconds = float(os.environ.get("BENCH_TASK_SECONDS", "10"))
time.sleep(seconds)
with open("made.txt", "w") as handle:
    handle.write("made\\n")
print(json.dumps({"type": "result", "subtype": "success", "is_error": False, "num_turns": 1,
                  "result": "done", "session_id": "s", "total_cost_usd": 0.01}))
"""


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def claim_latency(tasks: int) -> dict:
    """The three test workers (conftest.WORKERS, at 127.0.0.2-4) long-poll; each task is
    pinned to the next of them in turn."""
    with tempfile.TemporaryDirectory() as tmp:
        control = write_config(Path(tmp), claim_wait_s=30).start()
        try:
            operator = control.operator()
            claimed: dict[str, float] = {}
            stop = threading.Event()
            lock = threading.Lock()

            def poll(name: str) -> None:
                client = control.worker(name)
                while not stop.is_set():
                    try:
                        task = client.claim(wait_s=2)
                        if task is None:
                            continue
                        now = time.perf_counter()
                        with lock:
                            claimed[task["id"]] = now
                        client.finish(task["id"], "succeeded")
                    except ControlError:  # the service stopped at the end
                        return

            threads = [threading.Thread(target=poll, args=(name,), daemon=True)
                       for name in WORKERS]
            for thread in threads:
                thread.start()
            time.sleep(1.0)
            latencies = []
            names = list(WORKERS)
            for n in range(tasks):
                task = operator.submit({"prompt": "p", "repo": "https://example.org/r.git",
                                        "worker": names[n % len(names)]})
                answered = time.perf_counter()
                deadline = answered + 10
                while task["id"] not in claimed and time.perf_counter() < deadline:
                    time.sleep(0.0005)
                latencies.append(claimed[task["id"]] - answered)
            stop.set()
        finally:
            control.kill()
    return {"tasks": tasks, "pollers": len(WORKERS),
            "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
            "max_ms": round(max(latencies) * 1000, 2)}


def front_door_overhead(task_seconds: float, rounds: int) -> dict:
    direct, through = [], []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            door = FrontDoor(tmp_path)
            try:
                agent = make_standin(tmp_path / "bench-bin", "claude", SLEEPING_AGENT)
                config = yaml.safe_load(door.worker_config.read_text())
                config["agent_binaries"] = {"claude-code": str(agent)}
                door.worker_config.write_text(yaml.safe_dump(config))
                run_env = {**env(), "BENCH_TASK_SECONDS": str(task_seconds)}
                # Directly: the same agent, one task file, on the worker.
                task_file = tmp_path / "direct.json"
                task_file.write_text(json.dumps({"id": "direct", "prompt": "p"}))
                plain = dict(config)
                for name in ("control_cert", "control_key", "control_ca"):
                    plain.pop(name)
                plain_path = tmp_path / "plain.yaml"
                plain_path.write_text(yaml.safe_dump(plain))
                started = time.perf_counter()
                subprocess.run([sys.executable, "-m", "autocode.cli", "run", "--config",
                                str(plain_path), "--task-file", str(task_file)], check=True,
                               capture_output=True, env=run_env)
                direct.append(time.perf_counter() - started)
                # Through the front door: submit, a waiting worker claims, runs, reports.
                worker = subprocess.Popen(
                    [sys.executable, "-m", "autocode.cli", "serve", "--config",
                     str(door.worker_config), "--max-tasks", "1"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=run_env)
                time.sleep(2.0)  # the worker is up and long-polling, as in production
                started = time.perf_counter()
                task = door.task_json("submit", "--repo", str(door.src), "--prompt", "p",
                                      "--agent", "claude-code")
                door.wait_status(task["id"], ("succeeded", "failed"), within=task_seconds + 60)
                through.append(time.perf_counter() - started)
                worker.wait(30)
            finally:
                door.control.kill()
    d, t = statistics.median(direct), statistics.median(through)
    return {"task_seconds": task_seconds, "rounds": rounds, "direct_s": round(d, 2),
            "front_door_s": round(t, 2), "ratio": round(t / d, 3),
            "overhead_s": round(t - d, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.control")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--task-seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    latency = claim_latency(args.tasks)
    print(f"submit to claim, {latency['tasks']} tasks, {latency['pollers']} idle pollers: "
          f"p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms, max {latency['max_ms']} ms")
    overhead = front_door_overhead(args.task_seconds, args.rounds)
    print(f"a {overhead['task_seconds']:g} s task, median of {overhead['rounds']}: directly "
          f"{overhead['direct_s']} s, through the front door {overhead['front_door_s']} s: "
          f"ratio {overhead['ratio']} (target <= 1.10 for a 30 s task), overhead "
          f"{overhead['overhead_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
