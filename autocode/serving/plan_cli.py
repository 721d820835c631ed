"""autocode-plan: the GPU memory plan as a table, for an inventory, the defaults, the seed's
configuration, or a serving.json.

    autocode-plan                      the inventory at AUTOCODE_INVENTORY (or the lab's),
                                       else the defaults (tasks/serving.py)
    autocode-plan --inventory inv.yaml
    autocode-plan --defaults           the group-data defaults
    autocode-plan --seed               the seed's configuration as written (refused)
    autocode-plan --config /etc/autocode/serving.json    on the orchestrator

Exit status: 0 the plan fits, 1 it is refused (the problems are printed), 2 the settings
cannot be read. An inventory and the defaults need the autocode source tree (the deploy's
infra/ and tasks/), as on the control machine; --config needs only this package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from autocode.serving.plan import PlanInputError, plan_from_settings


def _deploy_defaults() -> dict:
    from infra.inventory_file import group_defaults
    from tasks import serving

    return {**serving.COMPONENT.settings, **serving.COMPONENT.role_settings["orchestrator"],
            **group_defaults("orchestrator")}


def _from_inventory(path: Path) -> tuple[str, dict]:
    import yaml

    from infra.inventory_file import _parse

    problems: list[str] = []
    hosts = _parse(yaml.safe_load(path.read_text()), problems)
    if problems:
        raise ValueError("; ".join(problems))
    for name, role, data in hosts:
        if role == "orchestrator":
            return name, {**_deploy_defaults(), **data}
    raise ValueError("no orchestrator in the inventory")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autocode-plan", description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--inventory", type=Path, help="an autocode inventory YAML")
    which.add_argument("--defaults", action="store_true", help="the group-data defaults")
    which.add_argument("--seed", action="store_true",
                       help="the seed's configuration as written")
    which.add_argument("--config", type=Path, help="a serving.json")
    args = parser.parse_args(argv)
    try:
        if args.config:
            raw = json.loads(args.config.read_text())
            title = str(args.config)
            gpus, models = raw.get("gpus"), [{k: v for k, v in m.items() if k != "path"}
                                              for m in raw.get("models", [])]
        elif args.seed:
            from tasks.serving import A5000_X2, SEED_MODELS
            title, gpus, models = "the seed's configuration, as written", A5000_X2, SEED_MODELS
        else:
            env = os.environ.get("AUTOCODE_INVENTORY")
            path = args.inventory or (Path(env) if env else None)
            if path is None and not args.defaults:
                from infra.inventory_file import LAB_INVENTORY
                path = LAB_INVENTORY if LAB_INVENTORY.is_file() else None
            if path is not None:
                name, data = _from_inventory(path)
                title = f"{path}: orchestrator {name!r}"
            else:
                data = _deploy_defaults()
                title = "the defaults (tasks/serving.py)"
            if data.get("model_serving") != "gpu":
                print(f"{title}: model_serving is {data.get('model_serving')!r}; the GPU "
                      "plan applies to gpu only")
                return 0
            gpus, models = data.get("serving_gpus"), data.get("serving_models")
        plan = plan_from_settings(gpus, models)
    except PlanInputError as exc:
        print("autocode-plan: the settings cannot be read:", file=sys.stderr)
        for field, text in exc.problems:
            print(f"  {field}: {text}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"autocode-plan: {exc}", file=sys.stderr)
        return 2
    print(f"GPU memory plan for {title}")
    print(plan.table())
    return 0 if plan.ok else 1


if __name__ == "__main__":
    sys.exit(main())
