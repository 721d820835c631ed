"""autocode-plan: the GPU memory plan as a table, for a serving.json or the seed's
configuration.

    autocode-plan --config /etc/autocode/serving.json    on the orchestrator
    autocode-plan --seed               the seed's configuration as written (refused)

For an inventory or the deploy's defaults, run the deploy's own command from the source
tree on the control machine: `python -m infra.plan_cli [--inventory inv.yaml | --defaults]`.

Exit status: 0 the plan fits, 1 it is refused (the problems are printed), 2 the settings
cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from autocode.serving.plan import A5000_X2, SEED_MODELS, PlanInputError, plan_from_settings


def show(title: str, gpus: Any, models: Any, prog: str = "autocode-plan") -> int:
    """Print the plan for these settings; returns the exit status."""
    try:
        plan = plan_from_settings(gpus, models)
    except PlanInputError as exc:
        print(f"{prog}: the settings cannot be read:", file=sys.stderr)
        for field, text in exc.problems:
            print(f"  {field}: {text}", file=sys.stderr)
        return 2
    print(f"GPU memory plan for {title}")
    print(plan.table())
    return 0 if plan.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autocode-plan", description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--seed", action="store_true",
                       help="the seed's configuration as written")
    which.add_argument("--config", type=Path, help="a serving.json")
    args = parser.parse_args(argv)
    if args.seed:
        return show("the seed's configuration, as written", A5000_X2, SEED_MODELS)
    try:
        raw = json.loads(args.config.read_text())
    except (OSError, ValueError) as exc:
        print(f"autocode-plan: {exc}", file=sys.stderr)
        return 2
    models = [{k: v for k, v in m.items() if k != "path"} for m in raw.get("models", [])]
    return show(str(args.config), raw.get("gpus"), models)


if __name__ == "__main__":
    sys.exit(main())
