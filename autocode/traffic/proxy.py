"""``autocode-proxy``: mitmdump with the traffic logger built in, the egress proxy's unit.

Takes mitmdump's command line. The addon is a top-level addon of the master, rather than a
script (`mitmdump -s addon.py`, which works too): every hook of every flow walks the addon
chain, and a script sits two levels down it. mitmdump's flow printer is left out; it
prints nothing at `flow_detail=0` anyway, but is asked about every event.
"""

from __future__ import annotations

import sys

from mitmproxy.tools import cmdline, dump
from mitmproxy.tools import main as mitmproxy_main

from autocode.traffic.addon import AutocodeLogger


class AuditedMaster(dump.DumpMaster):
    def __init__(self, options, loop=None, with_termlog: bool = True) -> None:
        super().__init__(options, loop=loop, with_termlog=with_termlog, with_dumper=False)
        self.addons.add(AutocodeLogger())


def main(argv: list[str] | None = None) -> int:
    mitmproxy_main.run(AuditedMaster, cmdline.mitmdump,
                       sys.argv[1:] if argv is None else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
