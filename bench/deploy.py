"""Re-apply speed: a no-change re-apply of the whole deploy against the lab, next to the
floor, one trivial command on every host (`pyinfra inventory.py exec -- true`).

Both are timed alternately over several rounds (their order rotated), and the table gives
medians with their spread and the ratio of the medians. Each re-apply must change nothing;
a round that changed something is reported, since its time would mean nothing.

    make lab && .venv/bin/python -m bench.deploy [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from infra.inventory_file import LAB_INVENTORY
from testing.deploy import Pyinfra, operations_per_host


def changes(result: dict) -> int:
    return sum(len(op["success"]) for op in result["results"]["operations"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inventory", type=Path,
                        default=Path(os.environ.get("AUTOCODE_INVENTORY") or LAB_INVENTORY))
    args = parser.parse_args(argv)
    if not args.inventory.is_file():
        print(f"bench.deploy: no inventory at {args.inventory}; bring the lab up and converge "
              "it first (`make lab`, as root). Skipped.")
        return 0
    pyinfra = Pyinfra(args.inventory)
    reapply_args = ("deploy.py", "-y", "--json")
    floor_args = ("exec", "-y", "--", "true")
    # Converge first, so every measured re-apply has nothing to do.
    pyinfra.command(*reapply_args)
    times: dict[str, list[float]] = {"re-apply (no change)": [], "floor (exec -- true)": []}
    changed_rounds, per_host = 0, {}
    for n in range(args.rounds):
        order = [("re-apply (no change)", reapply_args), ("floor (exec -- true)", floor_args)]
        for name, command in order[n % 2:] + order[:n % 2]:
            out, elapsed = pyinfra.command(*command)
            times[name].append(elapsed)
            if command is reapply_args:
                result = json.loads(out)
                per_host = operations_per_host(result)
                changed_rounds += changes(result) > 0
        print(f"  round {n + 1}/{args.rounds}: " + ", ".join(
            f"{name} {values[-1]:.2f} s" for name, values in times.items()), flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print()
    print(f"{'variant':<26}{'median s':>10}{'(min-max)':>16}")
    for name, values in times.items():
        print(f"{name:<26}{medians[name]:>10.2f}"
              f"{f'({min(values):.2f}-{max(values):.2f})':>16}")
    ratio = medians["re-apply (no change)"] / medians["floor (exec -- true)"]
    print(f"\nre-apply / floor: {ratio:.1f} (target <= 5); operations per host: "
          + ", ".join(f"{h} {n}" for h, n in sorted(per_host.items())))
    print(f"rounds whose re-apply changed something: {changed_rounds} (must be 0)")
    print("json: " + json.dumps({"medians_s": {k: round(v, 3) for k, v in medians.items()},
                                 "ratio": round(ratio, 2), "changed_rounds": changed_rounds,
                                 "operations_per_host": per_host}))
    return 1 if changed_rounds else 0


if __name__ == "__main__":
    sys.exit(main())
