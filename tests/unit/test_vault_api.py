"""The deploy's Vault API client (infra/vault_api.py) on an answer the real server gives
too briefly to hit on purpose; everything else of it runs against a real OpenBao
(tests/unit/test_vault.py)."""

from __future__ import annotations

import json

import pytest


def test_a_kv_mount_still_upgrading_is_waited_out_not_reported():
    """Just after a KV v2 mount is made, Vault and OpenBao answer 400 "Upgrading from
    non-versioned to versioned data" for a moment (seen here against OpenBao, as a flaky
    seed write). The client waits that out; any other 400 is reported at once. A local
    HTTP server stands in, giving that documented answer twice, since the real window is
    too short to hit on purpose."""
    import http.server
    import threading

    from infra.vault_api import KV_UPGRADING, VaultAPI, VaultAPIError

    answers = [(400, {"errors": [KV_UPGRADING + ". This backend will be unavailable for a "
                                 "brief period and will resume service shortly."]})] * 2
    answers += [(200, {"data": {"data": {"k": "v"}}})]
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            seen.append(self.path)
            status, body = answers.pop(0) if answers else (400, {"errors": ["bad path"]})
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = VaultAPI(f"http://127.0.0.1:{server.server_address[1]}", token="t")
        assert api.get("secret/data/crypto/TON") == {"data": {"data": {"k": "v"}}}
        assert len(seen) == 3
        with pytest.raises(VaultAPIError, match="bad path"):
            api.get("secret/data/other")
        assert len(seen) == 4  # not retried
    finally:
        server.shutdown()
