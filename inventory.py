"""pyinfra inventory: the `orchestrator` and `workers` groups, from an inventory YAML file.

The file is named by AUTOCODE_INVENTORY and defaults to the one `python -m lab up` writes.
Everything is validated here, before pyinfra connects to any host.
"""

import sys

from infra.errors import InventoryError
from infra.inventory_file import load
from roles import CATALOGUE

try:
    _groups = load(CATALOGUE)
except InventoryError as _exc:
    print(_exc.render(), file=sys.stderr)
    raise SystemExit(2) from None

orchestrator = _groups["orchestrator"]
workers = _groups["workers"]
