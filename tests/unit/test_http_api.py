"""The HTTP layer the deploy's clients of Vault, Nomad and Elasticsearch share
(infra/http_api.py): one error class whose message never holds a token or a body, no
proxy and nothing from the environment, the CA given as PEM text as the only one trusted,
and the SSH channel to the orchestrator's own Elasticsearch node.

The servers here are local stand-ins on 127.0.0.1 that record what reaches them (the
clients' behaviour against the real OpenBao, the Nomad double and the Elasticsearch double
is in test_vault.py, test_nomad.py and test_logging_pipeline.py); the tunnel runs against
the Elasticsearch double (`es_double`), once through a stand-in transport and once
through a real paramiko SSH connection to an in-process SSH server."""

from __future__ import annotations

import json
import pickle
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from pyinfra.api import OperationError

from infra import http_api
from infra.elasticsearch import ElasticsearchAPI, ElasticsearchError
from infra.nomad_api import NomadAPI, NomadAPIError
from infra.vault_api import VaultAPI, VaultAPIError
from testing.elasticsearch_double import ESDouble
from testing.tls import make_tls_files, server_tls_context

TOKEN = "s.PLANTED-TOKEN-3b7e"
SECRET = "PLANTED-BODY-VALUE-91d0"


class Recorder:
    """An HTTP(S) server on 127.0.0.1 answering every call with `answer` (status, headers,
    body bytes), and keeping what it was sent."""

    def __init__(self, answer=(200, {}, b"{}"), tls=None):
        self.seen: list[dict] = []
        self.answer = answer
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                owner.seen.append({"method": self.command, "path": self.path,
                                   "headers": dict(self.headers),
                                   "body": self.rfile.read(length) if length else b""})
                status, headers, body = owner.answer
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls:
            self.server.socket = server_tls_context(*tls).wrap_socket(self.server.socket,
                                                                     server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder():
    made = []

    def make(*args, **kwargs):
        made.append(Recorder(*args, **kwargs))
        return made[-1]

    yield make
    for server in made:
        server.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- one error class, never a token or a body -----------------------------------------------


CLIENT_CALLS = {
    # name: (the call with a token and a secret in its body, the refusal its service gives)
    "vault": (lambda url: VaultAPI(url, token=TOKEN).put("secret/data/x", {"v": SECRET}),
              (403, {"Content-Type": "application/json"},
               b'{"errors": ["1 error occurred:\\n\\t* permission denied\\n\\n"]}')),
    "nomad": (lambda url: NomadAPI(url, token=TOKEN).register({"ID": "j", "Meta": SECRET}, 0),
              (403, {"Content-Type": "text/plain"}, b"Permission denied")),
    "elasticsearch": (lambda url: ElasticsearchAPI(url, api_key=TOKEN).put("/_ilm/policy/p",
                                                                           {"v": SECRET}),
                      (403, {"Content-Type": "application/json"},
                       b'{"error": {"type": "security_exception", "reason": "action '
                       b'[cluster:admin/ilm/put] is unauthorized"}, "status": 403}')),
}


@pytest.mark.parametrize("client", sorted(CLIENT_CALLS))
def test_an_error_names_the_call_and_the_refusal_never_the_token_or_the_body(client,
                                                                             recorder):
    call, refusal = CLIENT_CALLS[client]
    server = recorder(refusal)
    with pytest.raises(http_api.APIError) as caught:
        call(server.url)
    text = str(caught.value)
    assert caught.value.status == 403 and "403" in text
    assert caught.value.path in text and caught.value.method in text
    assert TOKEN not in text and SECRET not in text
    assert TOKEN not in repr(caught.value) and SECRET not in repr(caught.value)
    sent = server.seen[0]
    assert SECRET.encode() in sent["body"]  # it was sent, and still not in the message
    assert TOKEN in json.dumps(sent["headers"])
    # Unreachable: the same, saying why in a few words.
    with pytest.raises(http_api.APIError) as caught:
        call(f"http://127.0.0.1:{_free_port()}")
    text = str(caught.value)
    assert "Connection refused" in text and caught.value.status is None
    assert TOKEN not in text and SECRET not in text


def test_the_three_error_names_are_one_class_and_keep_their_messages():
    for cls in (VaultAPIError, NomadAPIError, ElasticsearchError):
        assert issubclass(cls, http_api.APIError)
    assert issubclass(ElasticsearchError, OperationError)  # pyinfra's operation failure
    assert not issubclass(NomadAPIError, VaultAPIError)  # callers catch one service's
    assert str(VaultAPIError("GET", "sys/x", 403, "permission denied")) == \
        "Vault API GET sys/x: HTTP 403: permission denied"
    assert str(NomadAPIError("GET", "status/leader", None, "unreachable: x")) == \
        "Nomad API GET status/leader: unreachable: x"
    assert str(ElasticsearchError("GET", "/", 401, "security_exception: no")) == \
        "Elasticsearch refused GET /: HTTP 401 security_exception: no"
    for error in (VaultAPIError("PUT", "a", 400, "b"), ElasticsearchError("GET", "/", 500, "")):
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error)
        assert again.status == error.status


# -- nothing from the environment -----------------------------------------------------------


def test_proxies_ca_bundles_and_service_addresses_in_the_environment_are_ignored(
        recorder, monkeypatch, tmp_path):
    ca, cert, key = make_tls_files(tmp_path / "tls", "env")
    proxy = recorder((200, {"Content-Type": "application/json"}, b'"from the proxy"'))
    target = recorder((200, {"Content-Type": "application/json"}, b'"from the target"'))
    tls_target = recorder(tls=(cert, key))
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy", "VAULT_ADDR", "NOMAD_ADDR"):
        monkeypatch.setenv(name, proxy.url)
    for name in ("VAULT_TOKEN", "NOMAD_TOKEN"):
        monkeypatch.setenv(name, TOKEN)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "VAULT_CACERT", "NOMAD_CACERT"):
        monkeypatch.setenv(name, str(ca))
    # What this environment does to a plain requests session: the proxy gets the call.
    assert requests.Session().get(target.url + "/", timeout=5).json() == "from the proxy"
    proxy.seen.clear()

    assert VaultAPI(target.url).get("sys/health") == "from the target"
    assert NomadAPI(target.url).leader() == "from the target"
    assert ElasticsearchAPI(target.url).get("/") == "from the target"
    assert [s["path"] for s in target.seen] == ["/v1/sys/health", "/v1/status/leader", "/"]
    assert not any(TOKEN in json.dumps(s["headers"]) for s in target.seen)
    # REQUESTS_CA_BUNDLE names the CA that signed tls_target: still not trusted.
    for call in (lambda: VaultAPI(tls_target.url).get("x"),
                 lambda: NomadAPI(tls_target.url).leader(),
                 lambda: ElasticsearchAPI(tls_target.url).get("/")):
        with pytest.raises(http_api.APIError, match="CERTIFICATE_VERIFY_FAILED"):
            call()
    assert tls_target.seen == [] and proxy.seen == []


# -- the CA as PEM text ---------------------------------------------------------------------


def test_the_ca_given_as_pem_text_verifies_a_tls_server_and_is_the_only_one_trusted(
        recorder, tmp_path):
    ca, cert, key = make_tls_files(tmp_path / "right", "right")
    other, _, _ = make_tls_files(tmp_path / "other", "other")
    server = recorder((200, {"Content-Type": "application/json"}, b'{"ok": true}'),
                      tls=(cert, key))
    clients = {
        "vault": lambda pem: VaultAPI(server.url, pem).get("sys/health"),
        "nomad": lambda pem: NomadAPI(server.url, pem).leader(),
        "elasticsearch": lambda pem: ElasticsearchAPI(server.url, ca_pem=pem).get("/"),
    }
    for name, call in clients.items():
        assert call(ca.read_text()) == {"ok": True}, name
        for wrong in (other.read_text(), None):  # another CA; the system's store
            with pytest.raises(http_api.APIError, match="CERTIFICATE_VERIFY_FAILED"):
                call(wrong)
    # After use, the session's context still holds that one CA: nothing (certifi's
    # bundle, REQUESTS_CA_BUNDLE) was added to it.
    made = http_api.session(ca.read_text())
    assert made.get(server.url + "/", timeout=5).json() == {"ok": True}
    context = made.get_adapter(server.url)._context
    assert [c["subject"] for c in context.get_ca_certs()] == \
        [((("commonName", "right test CA"),),)]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_a_redirect_does_not_take_the_vault_token_elsewhere(recorder):
    elsewhere = recorder()
    server = recorder((307, {"Location": elsewhere.url + "/v1/sys/health"}, b""))
    with pytest.raises(VaultAPIError) as caught:
        VaultAPI(server.url, token=TOKEN).get("sys/health")
    assert caught.value.status == 307 and elsewhere.seen == []


# -- the SSH channel to the orchestrator's own node -----------------------------------------


class StandInTransport:
    """What paramiko's Transport offers the client: `open_channel`, here a socket
    connected to the destination on loopback (or refused, as paramiko's ChannelException
    says when nothing listens there)."""

    def __init__(self):
        self.opened: list[tuple] = []

    def open_channel(self, kind, dest_addr, src_addr, timeout=None):
        self.opened.append((kind, dest_addr))
        try:
            return socket.create_connection(dest_addr, timeout=timeout)
        except OSError as exc:
            raise RuntimeError(f"ChannelException(2, 'Connect failed'): {exc}") from None


@pytest.fixture
def es_double():
    double = ESDouble()
    double.start()
    yield double
    double.stop()


def _index_calls_through(api: ElasticsearchAPI, double: ESDouble) -> None:
    assert api.info()["tagline"] == "You Know, for Search"
    body = {"policy": {"phases": {"delete": {"min_age": "1d", "actions": {"delete": {}}}}}}
    api.put("/_ilm/policy/p", body)
    assert api.get("/_ilm/policy/p")["p"]["policy"] == body["policy"]
    assert api.get("/_ilm/policy/missing") is None
    assert [(m, p) for m, p in double.requests] == [
        ("GET", "/"), ("PUT", "/_ilm/policy/p"), ("GET", "/_ilm/policy/p"),
        ("GET", "/_ilm/policy/missing")]


def test_the_local_node_is_reached_through_the_tunnel_es_double(es_double):
    transport = StandInTransport()
    # The URL the deploy uses for the local node; the stand-in connects to the double.
    api = ElasticsearchAPI(f"http://127.0.0.1:{es_double.port}", tunnel=lambda: transport)
    _index_calls_through(api, es_double)
    assert transport.opened and set(transport.opened) == \
        {("direct-tcpip", ("127.0.0.1", es_double.port))}
    # Nothing listens there on the orchestrator: not answering yet, or said plainly.
    port = _free_port()
    refused = ElasticsearchAPI(f"http://127.0.0.1:{port}", tunnel=lambda: transport)
    assert refused.info() is None
    with pytest.raises(ElasticsearchError) as caught:
        refused.get("/_ilm/policy/p")
    assert str(caught.value).startswith(f"Elasticsearch at http://127.0.0.1:{port} cannot be "
                                        f"reached (ConnectionRefusedError: 127.0.0.1:{port} "
                                        "on the orchestrator: ")


def test_the_tunnel_is_a_real_paramiko_channel_es_double(es_double):
    """The same over paramiko's own Channel objects (what pyinfra's SSH connection gives):
    an in-process SSH server whose direct-tcpip channels it joins to the destination."""
    import paramiko

    class Server(paramiko.ServerInterface):
        def get_allowed_auths(self, username):
            return "none"

        def check_auth_none(self, username):
            return paramiko.AUTH_SUCCESSFUL

        def check_channel_direct_tcpip_request(self, chanid, origin, destination):
            try:
                self.upstream = socket.create_connection(destination, timeout=5)
            except OSError:
                return paramiko.OPEN_FAILED_CONNECT_FAILED
            return paramiko.OPEN_SUCCEEDED

    def pump(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()

    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        server_side = paramiko.Transport(listener.accept()[0])
        server_side.add_server_key(paramiko.RSAKey.generate(1024))
        handler = Server()
        server_side.start_server(server=handler)
        while (channel := server_side.accept(30)) is not None:
            for source, sink in ((channel, handler.upstream), (handler.upstream, channel)):
                threading.Thread(target=pump, args=(source, sink), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    client_side = paramiko.Transport(socket.create_connection(listener.getsockname()))
    try:
        client_side.start_client(timeout=10)
        client_side.auth_none("deploy")
        api = ElasticsearchAPI(f"http://127.0.0.1:{es_double.port}",
                               tunnel=lambda: client_side)
        _index_calls_through(api, es_double)
        assert ElasticsearchAPI(f"http://127.0.0.1:{_free_port()}",
                                tunnel=lambda: client_side).info() is None
    finally:
        client_side.close()
        listener.close()


# -- the sessions' CA (infra/control_api.py), shared by Vault's and Nomad's -----------------


class Orchestrator:
    """Just what a session touches of the pyinfra host: its name, the run's state, a fact
    and a shell command, both reading the CA file (None: not there yet)."""

    name = "orchestrator"

    def __init__(self, ca_text: str | None):
        from types import SimpleNamespace

        self.state = SimpleNamespace(current_stage="prepare")
        self.ca_text, self.facts, self.commands = ca_text, [], []

    def get_fact(self, cls, **kwargs):
        self.facts.append(kwargs)
        return self.ca_text

    def run_shell_command(self, command):
        from types import SimpleNamespace

        self.commands.append(command)
        lines = (self.ca_text or "").splitlines()
        return self.ca_text is not None, SimpleNamespace(stdout_lines=lines)


def test_both_sessions_read_the_platform_ca_once_when_planning_and_again_when_running(
        recorder, tmp_path):
    from infra import nomad, vault
    from infra.control_api import ServiceSession

    ca, cert, key = make_tls_files(tmp_path / "tls", "platform")
    seal = b'{"initialized": true, "sealed": false}'
    server = recorder((200, {"Content-Type": "application/json"}, seal), tls=(cert, key))
    host = Orchestrator(ca.read_text())
    vault_run = vault.Session(url=server.url, keys=vault.KeysFile(tmp_path / "v.json"),
                              orchestrator=host, ca_path="/etc/autocode/ca.pem")
    nomad_run = nomad.Session(url=server.url, keys=nomad.KeysFile(tmp_path / "n.json"),
                              orchestrator=host, ca_path="/etc/autocode/ca.pem")
    assert isinstance(vault_run, ServiceSession) and isinstance(nomad_run, ServiceSession)
    assert vault_run.read_status()["sealed"] is False  # over TLS, verified by that CA
    assert nomad_run.answers() and nomad_run.answers()
    assert vault_run.ca_pem == nomad_run.ca_pem == ca.read_text()
    assert len(server.seen) == 2 and len(host.facts) == 1  # one fact reading per run
    # When running: read again over the connection (the apply may have just made it).
    vault_run.ca_at_run_time()
    assert host.commands == ["cat -- /etc/autocode/ca.pem"]
    assert vault_run.ca_pem == ca.read_text().strip() + "\n"
    # No CA there yet: not planned against, said plainly when running.
    missing = Orchestrator(None)
    vault_run = vault.Session(url=server.url, keys=vault_run.keys, orchestrator=missing,
                              ca_path="/etc/autocode/ca.pem")
    assert vault_run.read_status() is None and len(server.seen) == 2
    with pytest.raises(OperationError, match="could not read the platform CA "
                                             "/etc/autocode/ca.pem on orchestrator"):
        vault_run.ca_at_run_time()
    # Nomad without TLS reads no CA at all.
    plain = recorder((200, {"Content-Type": "application/json"}, b'"127.0.0.1:4647"'))
    bare = Orchestrator(None)
    untls = nomad.Session(url=plain.url, keys=nomad_run.keys, orchestrator=bare, ca_path=None)
    assert untls.answers()
    untls.ca_at_run_time()
    assert bare.facts == [] and bare.commands == []
