"""`python -m lab.supervise NETNS ROLE systemd-nspawn ARGS...`: runs one lab host's
systemd-nspawn and boots it again when the host reboots, as systemd-nspawn@.service does
with RestartForceExitStatus=133 (nspawn exits with 133 when the container asks for a
reboot). Between the two boots the host's network namespace loses what a VM's reboot
loses (lab/network.py `reset_for_cold_boot`), so a reboot tests what the host restores.

SIGTERM and SIGINT are passed on to nspawn, which powers the container off; then this
exits with nspawn's status. A power-off inside the host (status 0) ends it too.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from .network import reset_for_cold_boot
from .sh import LabError

REBOOT_STATUS = 133
# A host that asks for a reboot this often is broken: stop rather than spin.
MAX_REBOOTS_PER_MINUTE = 10


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: python -m lab.supervise NETNS ROLE systemd-nspawn ARGS...",
              file=sys.stderr)
        return 2
    netns, role, argv = argv[0], argv[1], argv[2:]
    stopping = False
    child: subprocess.Popen | None = None

    def pass_on(signum, _frame):
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, pass_on)
    reboots: list[float] = []
    while True:
        child = subprocess.Popen(argv)
        status = child.wait()
        if stopping or status != REBOOT_STATUS:
            return status
        now = time.monotonic()
        reboots = [t for t in reboots if now - t < 60] + [now]
        if len(reboots) > MAX_REBOOTS_PER_MINUTE:
            print("lab.supervise: the host rebooted more than "
                  f"{MAX_REBOOTS_PER_MINUTE} times in a minute; leaving it off", flush=True)
            return status
        print(f"lab.supervise: {argv[0]} exited {status} (reboot); booting again", flush=True)
        try:
            reset_for_cold_boot(netns, role)
        except LabError as exc:
            print(f"lab.supervise: could not reset {netns} for the reboot: {exc}", flush=True)
            return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
