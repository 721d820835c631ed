"""The package cache on real hosts: the same `pip download` of a few wheels from four
workers, cold then warm: the first fetches each wheel from PyPI, the others get it from the
orchestrator's cache (checked against its digest), and every request is recorded; the same
`npm pack` of a few packages from the workers that have Node, each tarball cached under the
sha512 the registry's own package document gave it."""

from __future__ import annotations

import time

import pytest

from infra.inventory_file import group_defaults
from settings.agent_clis import AgentClis
from settings.mitmproxy import WORKER_CA, Mitmproxy
from testing.figures import record
from testing.traffic import remote_spool_records

pytestmark = pytest.mark.lab
WORKERS = group_defaults("workers")
SPOOL = Mitmproxy.spool_dir(group_defaults("orchestrator")["data_root"])
WHEELS = ("six==1.16.0", "idna==3.7", "packaging==24.1", "certifi==2024.7.4")
TARBALLS = ("is-number@7.0.0", "ms@2.1.3", "kleur@4.1.5")
LAB_DATA = {**WORKERS, "node_source": "npm-registry"}
LAB_CLIS = AgentClis.from_data(LAB_DATA)
NPM_PREFIX = LAB_CLIS.npm_prefix(WORKERS["install_dir"])
NODE_BIN = LAB_CLIS.node_bin_dir(WORKERS["install_dir"])
NODE_WORKERS = ("worker1", "worker3", "worker4")  # worker2 runs Aider: no Node there


def record_figures(label: str, seconds: dict[str, float], records: list[dict],
                   source: str = "upstream") -> None:
    """Seconds of the first (cold) and the other (warm) workers, in the order they ran,
    and the bytes that came from upstream beside those served from the cache."""
    cold, *warm = seconds.values()
    upstream = sum(r["response_bytes"] or 0 for r in records if r.get("cache") != "hit")
    served = sum(r["response_bytes"] or 0 for r in records if r.get("cache") == "hit")
    record(label, f"cold {cold:.1f} s, warm {min(warm):.1f}-{max(warm):.1f} s; {upstream} "
           f"bytes from {source}, {served} from the cache")


def pip_download(ssh, host: str, tag: str) -> float:
    started = time.monotonic()
    ssh(host, f"rm -rf /tmp/wheels-{tag} && runuser -u {WORKERS['service_user']} -- env "
        f"PIP_CERT=/etc/ssl/certs/ca-certificates.crt {WORKERS['install_dir']}/venv/bin/pip "
        f"download --no-deps --no-cache-dir --only-binary=:all: -q -d /tmp/wheels-{tag} "
        f"{' '.join(WHEELS)}")
    return time.monotonic() - started


def test_four_workers_download_the_same_wheels_once_from_upstream(ssh, converged):
    since = time.time()
    seconds = {host: pip_download(ssh, host, f"cache-{host}")
               for host in ("worker1", "worker2", "worker3", "worker4")}

    after = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(since)))

    def wheel_fetch(r: dict) -> bool:
        return r.get("host") == "files.pythonhosted.org" and r["url"].endswith(".whl") and \
            r["worker_id"] in seconds and r["status"] == 200 and r["@timestamp"] >= after
    records = remote_spool_records(ssh, SPOOL, wheel_fetch, want=4 * len(WHEELS))
    assert len(records) == 4 * len(WHEELS), len(records)
    by_worker = {h: [r.get("cache") for r in records if r["worker_id"] == h] for h in seconds}
    assert by_worker["worker1"].count("hit") <= len(WHEELS)
    assert sum(c == "hit" for cs in by_worker.values() for c in cs) >= 3 * len(WHEELS)
    record_figures("package cache: 4 workers x 4 wheels", seconds, records)


def npm_pack(ssh, host: str, tag: str) -> float:
    """`npm pack` fetches each package's document and tarball, as an install does; its own
    cache is a fresh folder, so every byte crosses the proxy."""
    started = time.monotonic()
    npm = f"{NODE_BIN}/node {WORKERS['install_dir']}/npm/bin/npm-cli.js"
    ssh(host, f"rm -rf /tmp/{tag} /tmp/{tag}-cache && mkdir /tmp/{tag} && cd /tmp/{tag} && "
        f"NODE_EXTRA_CA_CERTS={WORKER_CA} "
        f"{npm} pack --silent --cache /tmp/{tag}-cache {' '.join(TARBALLS)} >/dev/null")
    return time.monotonic() - started


def test_workers_fetch_the_same_npm_tarballs_once_from_upstream(ssh, converged):
    since = time.time()
    seconds = {host: npm_pack(ssh, host, f"npm-{host}") for host in NODE_WORKERS}
    after = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(since)))

    def tarball_fetch(r: dict) -> bool:
        return r.get("host") == "registry.npmjs.org" and r["url"].endswith(".tgz") and \
            r["worker_id"] in seconds and r["status"] == 200 and r["@timestamp"] >= after
    records = remote_spool_records(ssh, SPOOL, tarball_fetch,
                                   want=len(NODE_WORKERS) * len(TARBALLS))
    assert len(records) == len(NODE_WORKERS) * len(TARBALLS), len(records)
    hits = sum(r.get("cache") == "hit" for r in records)
    first = [r.get("cache") for r in records if r["worker_id"] == NODE_WORKERS[0]]
    assert "hit" not in first or hits >= len(TARBALLS)  # warm already from an earlier run
    assert hits >= (len(NODE_WORKERS) - 1) * len(TARBALLS), [
        (r["worker_id"], r["url"], r.get("cache")) for r in records]
    record_figures("package cache: 3 workers x 3 npm tarballs", seconds, records)


def test_workers_fetch_the_same_debian_package_once_from_the_mirror(ssh, converged):
    """worker1 fetches its apt indexes afresh (the proxy reads the Packages index as it
    passes, by its hash); then every worker downloads the same .deb: the first from the
    mirror, the others from the cache, under the SHA256 the index gave it."""
    since = time.time()
    ssh("worker1", "rm -rf /var/lib/apt/lists/* && apt-get update -qq")
    seconds = {}
    for host in ("worker1", "worker2", "worker3", "worker4"):
        started = time.monotonic()
        ssh(host, "rm -rf /tmp/deb-cache && mkdir /tmp/deb-cache && cd /tmp/deb-cache && "
            "apt-get download -qq hello")
        seconds[host] = time.monotonic() - started
    after = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(since)))

    def deb_fetch(r: dict) -> bool:
        return r.get("host") == "deb.debian.org" and "/hello_" in r.get("url", "") and \
            r["url"].endswith(".deb") and r["status"] == 200 and r["@timestamp"] >= after
    records = remote_spool_records(ssh, SPOOL, deb_fetch, want=4)
    assert len(records) == 4, records
    by_worker = {r["worker_id"]: r.get("cache") for r in records}
    assert [by_worker[h] for h in ("worker2", "worker3", "worker4")] == ["hit"] * 3, by_worker
    record_figures("package cache: 4 workers x 1 .deb", seconds, records, "the mirror")
