"""Git over HTTPS for workers: git's own smart-HTTP server (`git http-backend`, a CGI
program) behind the workers' listener, so a worker reaches a repository only with its
client certificate and only while it holds a task on that repository.

What a worker may do is decided here and by git itself, not by parsing packs:
- fetch: its task's repository, with other tasks' result branches hidden
  (`uploadpack.hideRefs`);
- push: only `refs/heads/autocode/<its task id>`, checked by a pre-receive hook that git
  runs for every push (`core.hooksPath` given per request, so no repository's own hooks run).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

RESULT_REF_PREFIX = "refs/heads/autocode/"
SERVICES = {("GET", "info/refs"), ("POST", "git-upload-pack"), ("POST", "git-receive-pack")}

PRE_RECEIVE = """#!/bin/sh
# autocode-control: a worker may push only its own task's branch.
status=0
while read -r old new ref; do
    if [ "$ref" != "$AUTOCODE_ALLOWED_REF" ]; then
        echo "autocode: refusing $ref: this task may push only $AUTOCODE_ALLOWED_REF" >&2
        status=1
    fi
done
exit $status
"""


def install_hooks(directory: Path) -> Path:
    """The hooks every push runs; written at start, so a changed copy on disk is replaced."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o755)
    hook = directory / "pre-receive"
    tmp = directory / ".pre-receive.tmp"
    tmp.write_text(PRE_RECEIVE)
    tmp.chmod(0o755)
    os.replace(tmp, hook)
    return directory


def is_service(method: str, rest: str, query: str) -> bool:
    if (method, rest) not in SERVICES:
        return False
    return rest != "info/refs" or query in ("service=git-upload-pack",
                                            "service=git-receive-pack")


async def run_backend(*, repos_dir: Path, repo: str, rest: str, method: str, query: str,
                      content_type: str, content_length: str | None, content_encoding: str,
                      git_protocol: str, body: AsyncIterator[bytes], worker: str,
                      task_id: str, hooks_dir: Path
                      ) -> tuple[int, list[tuple[str, str]], AsyncIterator[bytes]]:
    """Runs git http-backend for one request: (status, headers, body chunks)."""
    config = {"core.hooksPath": str(hooks_dir),
              "uploadpack.hideRefs": RESULT_REF_PREFIX,
              "http.receivepack": "true",
              "http.uploadpack": "true",
              "receive.denyDeletes": "true"}
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GIT_PROJECT_ROOT": str(repos_dir),
        "GIT_HTTP_EXPORT_ALL": "1",
        "PATH_INFO": f"/{repo}.git/{rest}",
        "REQUEST_METHOD": method,
        "QUERY_STRING": query,
        "CONTENT_TYPE": content_type,
        "REMOTE_USER": worker,
        "REMOTE_ADDR": worker,
        "AUTOCODE_ALLOWED_REF": RESULT_REF_PREFIX + task_id,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_COUNT": str(len(config)),
    }
    if content_length is not None:  # without one (chunked), git reads to the end
        env["CONTENT_LENGTH"] = content_length
    if content_encoding:
        env["HTTP_CONTENT_ENCODING"] = content_encoding
    if git_protocol:
        env["GIT_PROTOCOL"] = git_protocol
    for n, (key, value) in enumerate(config.items()):
        env[f"GIT_CONFIG_KEY_{n}"], env[f"GIT_CONFIG_VALUE_{n}"] = key, value
    # The whole request first, into a file: git answers before it has read a push, and
    # the response's own disconnect listener would then take the rest of the body.
    spool = tempfile.TemporaryFile()
    async for chunk in body:
        spool.write(chunk)
    spool.seek(0)
    process = await asyncio.create_subprocess_exec(
        "git", "http-backend", env=env, stdin=spool,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    spool.close()  # the child has its own descriptor
    assert process.stdout and process.stderr
    errors = asyncio.ensure_future(process.stderr.read())
    status, headers = 200, []
    while True:  # the CGI header block, up to its blank line
        line = (await process.stdout.readline()).decode("latin-1").rstrip("\r\n")
        if not line:
            break
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.strip().split()[0])
        else:
            headers.append((name.strip(), value.strip()))

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while chunk := await process.stdout.read(65536):
                yield chunk
        finally:
            await process.wait()
            await errors

    return status, headers, chunks()
