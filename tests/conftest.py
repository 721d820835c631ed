"""Make the repository importable as pyinfra sees it (inventory.py, deploy.py, infra/)."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
