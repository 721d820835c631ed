"""``autocode-traffic-shipper``: the spool -> Elasticsearch shipper, its own systemd unit.

    autocode-traffic-shipper --config /etc/autocode/traffic.yaml          # run until SIGTERM
    autocode-traffic-shipper --config /etc/autocode/traffic.yaml --check-config
    autocode-traffic-shipper --print-addon-path                            # for mitmdump -s
    autocode-traffic-shipper --init-ca /etc/autocode/mitmproxy             # the proxy CA, once
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from loguru import logger

from autocode.traffic.config import TrafficConfigError, load_config


def addon_path() -> Path:
    return Path(__file__).with_name("addon.py")


async def _serve(config_path: str) -> None:
    from autocode.traffic.shipper import Shipper

    config = load_config(config_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    shipper = Shipper(config)
    try:
        await shipper.run(stop)
    finally:
        await shipper.close()
        logger.info("traffic shipper stopped at segment {} offset {} ({} shipped, {} "
                    "dead-lettered)", shipper.checkpoint.segment, shipper.checkpoint.offset,
                    shipper.checkpoint.shipped_total, shipper.checkpoint.dead_lettered_total)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autocode-traffic-shipper", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="traffic logger YAML config")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the config and exit (0 = valid, 2 = invalid)")
    parser.add_argument("--print-addon-path", action="store_true",
                        help="print the mitmproxy addon script path and exit")
    parser.add_argument("--init-ca", metavar="DIR",
                        help="make the proxy CA in DIR unless it exists, print the "
                        "certificate's path and exit")
    args = parser.parse_args(argv)
    if args.print_addon_path:
        print(addon_path())
        return 0
    if args.init_ca:
        from autocode.traffic.ca import CAError, init_ca

        try:
            print(init_ca(args.init_ca))
        except (CAError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if not args.config:
        parser.error("--config is required")
    try:
        load_config(args.config)
    except TrafficConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"{args.config}: valid")
        return 0
    asyncio.run(_serve(args.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
