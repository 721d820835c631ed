"""The Elasticsearch test double as its own process, for the bench:

    python -m testing.elasticsearch_double_process PORT
"""

from __future__ import annotations

import sys
import time

from testing.elasticsearch_double import ESDouble

if __name__ == "__main__":
    double = ESDouble()
    double.port = int(sys.argv[1])
    double.start()
    print("ready", flush=True)
    deadline = time.monotonic() + 3600  # bounded even if the parent forgets us
    while time.monotonic() < deadline:
        time.sleep(1)
