"""The mitmproxy component's settings, and the proxy's names other components use: its
account, its CA on the workers, the variables that point agents at that CA."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from autocode.traffic.config import NON_HTTP_POLICIES
from infra.settings import Boolean, Describe, PemFiles, Port, Settings, refuse_unless

PROXY_USER = "autocode-proxy"
CONFDIR = "/etc/autocode/mitmproxy"
CA_KEY = f"{CONFDIR}/mitmproxy-ca.pem"  # key and certificate, as mitmproxy keeps them
CA_CERT = f"{CONFDIR}/mitmproxy-ca-cert.pem"
UPSTREAM_DIR = f"{CONFDIR}/upstream"
ADDON = f"{CONFDIR}/autocode_addon.py"
TRAFFIC_CONFIG = "/etc/autocode/traffic.yaml"
# On workers: the proxy's CA in the trust store, and the variables naming it for agents
# (Node, Python, curl read their own).
WORKER_CA_DIR = "/usr/local/share/ca-certificates/autocode-proxy"
WORKER_CA = f"{WORKER_CA_DIR}/autocode-proxy-ca.crt"
AGENT_ENV = "/etc/autocode/proxy-ca.env"
PROFILE = "/etc/profile.d/autocode-proxy-ca.sh"

NON_HTTP = {"block": "refuses and records connections that are not HTTP",
            "allow": "relays and records them"}
assert set(NON_HTTP) == set(NON_HTTP_POLICIES)


def _is_version(value) -> bool:
    return isinstance(value, str) and value[:1].isdigit()


def _days(zero_ok: bool):
    fix = "e.g. 7, or null to keep them" + (", or 0 to keep no copy" if zero_ok else "")
    return Annotated[int | float | None, refuse_unless(
        lambda v: v is None or (v > 0 or zero_ok and v == 0),
        lambda v: f"{v!r} is not a number of days; {fix}"), Describe("a number of days", fix)]


class Mitmproxy(Settings):
    mitmproxy_port: Port = 8080
    """The transparent proxy's port on the orchestrator (workers' 80/443 REDIRECTed to it)."""
    mitmproxy_version: Annotated[str, refuse_unless(
        _is_version, lambda v: f"{v!r} is not a version; pin one, e.g. 11.0.2"),
        Describe("a version", "pin one, e.g. 11.0.2")] = "11.0.2"
    """mitmproxy where the host's python3 is older than 3.12."""
    mitmproxy_version_py312: Annotated[str | None, refuse_unless(
        lambda v: v is None or _is_version(v),
        lambda v: f"{v!r} is not a version; pin one, e.g. 12.3.1, or null for "
                  "mitmproxy_version on every Python"),
        Describe("a version", "pin one, e.g. 12.3.1, or null for mitmproxy_version on every "
                              "Python")] = "12.3.1"
    """mitmproxy where python3 is 3.12 or newer (Debian 13, Ubuntu 24.04: mitmproxy 12 needs
    3.12); null: mitmproxy_version everywhere."""
    proxy_fail_closed: Boolean = True
    """New flows get a 503 when the spool cannot be written (unaudited egress is worse than
    none); false lets them through."""
    proxy_non_http: Annotated[str, refuse_unless(
        lambda v: v in NON_HTTP,
        lambda v: f"{v!r} is not a policy; use one of {', '.join(NON_HTTP)} (block "
                  f"{NON_HTTP['block']}; allow {NON_HTTP['allow']})"),
        Describe("a policy", "use one of block, allow")] = "block"
    """Connections that are not HTTP (raw TCP, TLS around another protocol, WebSocket and
    other upgrades): block refuses them, allow relays them; each is recorded."""
    proxy_upstream_ca_certs: PemFiles = []
    """Control-machine paths of CA certificates the proxy trusts upstream, beyond the
    system store."""
    traffic_elasticsearch_url: Annotated[str | None, refuse_unless(
        lambda v: v is None or v.startswith(("http://", "https://")),
        lambda v: f"{v!r} is not an http(s) URL; e.g. http://127.0.0.1:9200, or leave it "
                  "unset for the elasticsearch component's cluster"),
        Describe("an http(s) URL")] = None
    """Where the traffic shipper sends the spool; unset: the elasticsearch component's
    cluster (the local node, or elasticsearch_url), with its API key and CA."""
    package_cache_max_gb: Annotated[int | float, Field(ge=0), Describe(
        "a size in GB", "e.g. 5, or 0 for no package cache")] = 5
    """Disk for content-addressed package artifacts served from the orchestrator (each
    checked against its digest); 0 turns the cache off."""
    traffic_shipped_keep_days: _days(zero_ok=True) = 7
    """Days shipped spool segments stay on the orchestrator beside Elasticsearch (sooner
    deleted when the disk runs short); null: kept; 0: no copy kept."""
    traffic_dead_letter_keep_days: _days(zero_ok=False) = 90
    """Days records Elasticsearch refused for good (their only copy) stay after their last
    day; null: kept."""

    def pin(self, python: list[int] | None) -> str:
        """The mitmproxy release for a host whose python3 is `python` ([major, minor])."""
        if python and tuple(python) >= (3, 12) and self.mitmproxy_version_py312:
            return self.mitmproxy_version_py312
        return self.mitmproxy_version

    def runtime_pins(self, python: list[int] | None) -> list[str]:
        version = self.pin(python)
        # mitmproxy 11 imports passlib, whose bcrypt probe crashes on bcrypt 5 (12 needs 5).
        return [f"mitmproxy=={version}"] + (["bcrypt>=4,<5"] if version.startswith("11.")
                                            else [])

    @staticmethod
    def spool_dir(data_root: str) -> str:
        return f"{data_root}/logs/traffic/spool"

    @staticmethod
    def cache_dir(data_root: str) -> str:
        return f"{data_root}/cache/packages"
