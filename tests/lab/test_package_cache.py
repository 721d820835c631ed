"""The package cache on real hosts: the same `pip download` of a few wheels from four
workers, cold then warm: the first fetches each wheel from PyPI, the others get it from the
orchestrator's cache (checked against its digest), and every request is recorded."""

from __future__ import annotations

import time

import pytest

from infra.inventory_file import group_defaults
from tasks.mitmproxy import spool_dir
from testing.figures import record
from testing.traffic import remote_spool_records

pytestmark = pytest.mark.lab
WORKERS = group_defaults("workers")
SPOOL = spool_dir(group_defaults("orchestrator"))
WHEELS = ("six==1.16.0", "idna==3.7", "packaging==24.1", "certifi==2024.7.4")


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
    upstream = sum(r["response_bytes"] or 0 for r in records if r.get("cache") != "hit")
    served = sum(r["response_bytes"] or 0 for r in records if r.get("cache") == "hit")
    record("package cache: 4 workers x 4 wheels",
           f"cold {seconds['worker1']:.1f} s, warm {min(list(seconds.values())[1:]):.1f}-"
           f"{max(list(seconds.values())[1:]):.1f} s; {upstream} bytes from upstream, "
           f"{served} from the cache")
