"""`python -m lab up|down|status|ssh`: the lab's command line (over lab/api.py)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from .api import Lab
from .config import SUITE, SUITES, LabConfig, default_extra_ca_certs
from .sh import LabError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="build and boot the lab hosts, write the inventory")
    p_up.add_argument("--workers", type=int, default=4, help="number of workers (default 4)")
    p_up.add_argument("--suite", choices=SUITES, default=SUITE,
                      help=f"Debian release of the hosts (default {SUITE}; "
                      "AUTOCODE_LAB_SUITE sets the default)")
    p_up.add_argument("--extra-ca", action="append", type=Path, default=None, metavar="FILE",
                      help="CA certificate the hosts should trust (repeatable); default: "
                      "those in /usr/local/share/ca-certificates")
    sub.add_parser("down", help="remove every host, interface and firewall rule of the lab")
    sub.add_parser("status", help="show the hosts and whether they run")
    p_ssh = sub.add_parser("ssh", help="open a shell or run a command on a lab host")
    p_ssh.add_argument("host")
    p_ssh.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    try:
        if args.cmd == "up":
            if not 1 <= args.workers <= 40:
                raise LabError("--workers must be between 1 and 40")
            extra = tuple(args.extra_ca) if args.extra_ca is not None else default_extra_ca_certs()
            for cert in extra:
                if not cert.is_file():
                    raise LabError(f"--extra-ca {cert}: no such file")
            lab = Lab(replace(LabConfig(), workers=args.workers, extra_ca_certs=extra,
                              suite=args.suite))
            seconds = lab.up()
            print(f"lab up: {len(lab.hosts)} hosts in {seconds:.0f}s; inventory at "
                  f"{lab.inventory_file}")
        elif args.cmd == "down":
            Lab(LabConfig()).down()
            print("lab down: no container, namespace, interface or firewall rule of the lab "
                  "is left")
        elif args.cmd == "status":
            lab = Lab.current()
            running = lab.status()
            for m in lab.hosts:
                pid = running[m.name]
                print(f"{m.name:14} {m.ssh_addr:15} "
                      f"{'running pid ' + str(pid) if pid else 'stopped'}")
            return 0 if all(running.values()) else 3
        elif args.cmd == "ssh":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            argv = Lab.current().ssh_argv(args.host, command)
            os.execvp(argv[0], argv)
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
