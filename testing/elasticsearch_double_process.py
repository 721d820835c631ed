"""The Elasticsearch test double as its own process, for the bench and as the lab's
Elasticsearch fixture (tests/lab/test_logging.py runs it on the orchestrator):

    python -m testing.elasticsearch_double_process PORT [ADDRESS] [SECONDS]

ADDRESS defaults to 127.0.0.1; SECONDS (how long it lives, bounded even if its parent
forgets it) to 3600. It needs only Python's standard library.
"""

from __future__ import annotations

import sys
import time

from testing.elasticsearch_double import ESDouble

if __name__ == "__main__":
    double = ESDouble()
    double.port = int(sys.argv[1])
    if len(sys.argv) > 2:
        double.host = sys.argv[2]
    lifetime = float(sys.argv[3]) if len(sys.argv) > 3 else 3600
    double.start()
    print("ready", flush=True)
    deadline = time.monotonic() + lifetime
    while time.monotonic() < deadline:
        time.sleep(1)
