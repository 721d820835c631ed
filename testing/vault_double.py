"""A Vault test double: a real HTTP(S) server on 127.0.0.1 speaking the parts of Vault's
documented HTTP API that autocode uses. It is not Vault; tests that use it say so.

- GET /v1/<mount>/data/<path>      KV v2 read: {"data": {"data": {...}, "metadata": {...}}}
- GET /v1/auth/token/lookup-self   token lookup
- 403 {"errors": ["permission denied"]} for a wrong token or a path outside its policy
- 404 {"errors": []} for a missing secret; a deleted latest version answers 404 with
  the metadata (deletion_time set), as Vault does
- 503 {"errors": ["Vault is sealed"]} while sealed
"""

from __future__ import annotations

import json
import ssl
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class VaultDouble:
    def __init__(self, token: str, mount: str = "secret"):
        self.token = token
        self.mount = mount
        self.secrets: dict[str, dict] = {}
        self.deleted: set[str] = set()
        self.forbidden_paths: set[str] = set()
        self.sealed = False
        self.requests: list[tuple[str, str]] = []
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    def start(self, tls: ssl.SSLContext | None = None) -> VaultDouble:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                double.requests.append(("GET", self.path))
                status, body = double.answer(self.path, self.headers.get("X-Vault-Token"))
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def answer(self, path: str, token: str | None) -> tuple[int, dict]:
        path = path.split("?", 1)[0]
        if self.sealed:
            return 503, {"errors": ["Vault is sealed"]}
        if token != self.token:
            return 403, {"errors": ["permission denied"]}
        if path == "/v1/auth/token/lookup-self":
            return 200, _envelope({"accessor": "acc-1", "id": self.token, "policies":
                                   ["default", "autocode-worker"], "ttl": 3600,
                                   "renewable": True, "display_name": "token"})
        prefix = f"/v1/{self.mount}/data/"
        if not path.startswith(prefix):
            return 404, {"errors": []}
        secret_path = path[len(prefix):]
        if secret_path in self.forbidden_paths:
            return 403, {"errors": ["permission denied"]}
        metadata = {"created_time": "2024-05-01T12:00:00.000000Z", "custom_metadata": None,
                    "deletion_time": "", "destroyed": False, "version": 1}
        if secret_path in self.deleted:
            deleted_meta = {**metadata, "deletion_time": "2024-05-02T12:00:00.000000Z"}
            return 404, _envelope({"data": None, "metadata": deleted_meta})
        if secret_path not in self.secrets:
            return 404, {"errors": []}
        return 200, _envelope({"data": self.secrets[secret_path], "metadata": metadata})


def _envelope(data: dict) -> dict:
    return {"request_id": str(uuid.uuid4()), "lease_id": "", "renewable": False,
            "lease_duration": 0, "data": data, "wrap_info": None, "warnings": None,
            "auth": None}
