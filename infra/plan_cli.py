"""The GPU memory plan for an inventory's orchestrator, or for the deploy's defaults: the
deploy's side of `autocode-plan` (which reads a serving.json on the orchestrator).

    python -m infra.plan_cli                      the inventory at AUTOCODE_INVENTORY (or
                                                  the lab's), else the defaults
    python -m infra.plan_cli --inventory inv.yaml
    python -m infra.plan_cli --defaults           the group-data defaults

Exit status: 0 the plan fits, 1 it is refused (the problems are printed), 2 the settings
cannot be read.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from autocode.serving.plan_cli import show

from .inventory_file import LAB_INVENTORY, group_defaults, parse_hosts

PROG = "python -m infra.plan_cli"


def _from_inventory(path: Path) -> tuple[str, dict]:
    problems: list[str] = []
    hosts = parse_hosts(yaml.safe_load(path.read_text()), problems)
    if problems:
        raise ValueError("; ".join(problems))
    for name, role, data in hosts:
        if role == "orchestrator":
            return name, {**group_defaults("orchestrator"), **data}
    raise ValueError("no orchestrator in the inventory")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--inventory", type=Path, help="an autocode inventory YAML")
    which.add_argument("--defaults", action="store_true", help="the group-data defaults")
    args = parser.parse_args(argv)
    env = os.environ.get("AUTOCODE_INVENTORY")
    path = args.inventory or (Path(env) if env else None)
    if path is None and not args.defaults and LAB_INVENTORY.is_file():
        path = LAB_INVENTORY
    try:
        if path is not None:
            name, data = _from_inventory(path)
            title = f"{path}: orchestrator {name!r}"
        else:
            data, title = group_defaults("orchestrator"), "the defaults (settings/serving.py)"
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if data.get("model_serving") != "gpu":
        print(f"{title}: model_serving is {data.get('model_serving')!r}; the GPU plan "
              "applies to gpu only")
        return 0
    return show(title, data.get("serving_gpus"), data.get("serving_models"), PROG)


if __name__ == "__main__":
    sys.exit(main())
