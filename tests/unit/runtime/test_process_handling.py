"""Runaway agents: hangs, grandchildren, huge output, unstartable binaries."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest

from autocode.agents import ClaudeCodeAgent, Task
from autocode.agents.process import as_account, run_bounded
from autocode.agents.types import FAILED, TIMED_OUT
from testing.standins import make_standin, pid_is_gone

HANGING_WITH_GRANDCHILD = """
import signal, subprocess
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # force the SIGKILL escalation
grandchild = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
with open(os.environ["PIDS_FILE"], "w") as handle:
    handle.write(f"{os.getpid()} {grandchild.pid}")
sys.stderr.write("still thinking...\\n")
sys.stderr.flush()
time.sleep(300)
"""


def _wait_until(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_timeout_kills_the_whole_process_group_including_grandchild(
        tmp_path, agent_config_for, monkeypatch):
    pids_file = tmp_path / "pids"
    monkeypatch.setenv("PIDS_FILE", str(pids_file))
    binary = make_standin(tmp_path / "bin", "claude", HANGING_WITH_GRANDCHILD)
    agent = ClaudeCodeAgent(agent_config_for(binary_path=str(binary), task_timeout_s=1.5,
                                             kill_grace_s=0.3))
    started = time.monotonic()
    result = agent.execute_task(Task("hang", "p"))
    elapsed = time.monotonic() - started

    child_pid, grandchild_pid = map(int, pids_file.read_text().split())
    assert result.status == TIMED_OUT
    assert "1.5s wall-clock timeout" in result.error and "still thinking" in result.error
    assert elapsed < 6, elapsed
    assert result.exit_code == -signal.SIGKILL
    assert pid_is_gone(child_pid)
    assert _wait_until(lambda: pid_is_gone(grandchild_pid), 5), "grandchild survived"


def test_leftover_background_process_is_killed_after_normal_exit(tmp_path):
    pid_file = tmp_path / "bg.pid"
    script = (f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
              f"'import time; time.sleep(300)']); open({str(pid_file)!r}, 'w').write(str(p.pid))")
    outcome = run_bounded([sys.executable, "-c", script], env=os.environ, cwd=tmp_path,
                          timeout_s=20, max_stdout_bytes=1024)
    assert outcome.returncode == 0 and not outcome.timed_out
    assert _wait_until(lambda: pid_is_gone(int(pid_file.read_text())), 5)


def test_huge_output_keeps_memory_bounded_and_fails(tmp_path, agent_config_for, capsys):
    binary = make_standin(tmp_path / "bin", "claude", """
        chunk = b"x" * (1 << 20)
        for _ in range(200):           # 200 MiB to stdout
            sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        for _ in range(20):            # 20 MiB to stderr
            sys.stderr.buffer.write(chunk)
    """)
    agent = ClaudeCodeAgent(agent_config_for(binary_path=str(binary),
                                             max_output_bytes=1 << 20))
    peak_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = agent.execute_task(Task("flood", "p"))
    peak_after_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    growth_mib = (peak_after_kib - peak_before_kib) / 1024
    with capsys.disabled():
        print(f"\n[huge output] 200 MiB stdout + 20 MiB stderr; peak RSS growth "
              f"{growth_mib:.1f} MiB; kept {(result.logs_path / 'stdout.log').stat().st_size} "
              "bytes of stdout")
    assert result.status == FAILED
    assert "output too large: 209715200 bytes" in result.error
    assert (result.logs_path / "stdout.log").stat().st_size == 1 << 20
    assert (result.logs_path / "stderr-tail.log").stat().st_size <= 16 * 1024
    assert growth_mib < 64


def test_unstartable_binary_is_a_failed_result(tmp_path, agent_config_for):
    broken = tmp_path / "bin" / "claude"
    broken.parent.mkdir()
    broken.write_text("#!/nonexistent/interpreter\n")
    broken.chmod(0o755)
    result = ClaudeCodeAgent(agent_config_for(binary_path=str(broken))).execute_task(
        Task("t1", "p"))
    assert result.status == FAILED and "cannot start" in result.error


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and util-linux's setpriv")
def test_an_agent_under_its_own_account_holds_no_capability_of_its_worker():
    """A worker that is not root runs its agent under another account with CAP_SETUID and
    CAP_SETGID as ambient capabilities (as its unit gives them). A plain uid change keeps
    them, and exec passes them on (the control below shows it): the agent could become
    its worker again. Through as_account it holds none."""
    report = "grep -E '^Cap(Prm|Eff|Amb):' /proc/self/status; id -u"
    worker = ["setpriv", "--reuid=1", "--regid=1", "--clear-groups",
              "--inh-caps=+setuid,+setgid", "--ambient-caps=+setuid,+setgid", "--"]

    def caps(argv: list[str]) -> dict[str, str]:
        out = subprocess.run([*worker, *argv], capture_output=True, text=True, check=True)
        lines = out.stdout.split()
        return {**dict(zip(lines[0:-1:2], lines[1:-1:2], strict=True)), "uid": lines[-1]}

    plain = caps(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                  "sh", "-c", report])
    assert plain["uid"] == "65534" and int(plain["CapAmb:"], 16) != 0  # the hazard
    agent = caps(as_account(["sh", "-c", report], 65534, 65534))
    assert agent == {"CapPrm:": "0" * 16, "CapEff:": "0" * 16, "CapAmb:": "0" * 16,
                     "uid": "65534"}
