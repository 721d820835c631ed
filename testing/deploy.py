"""Running the real deploy as a user does, and reading its `--json` report: shared by the
lab tests and `bench.deploy`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))


class DeployFailed(AssertionError):
    """pyinfra exited non-zero; the message carries the tail of its stderr."""


class Pyinfra:
    """The real CLI against one inventory file (AUTOCODE_INVENTORY), from the repository."""

    def __init__(self, inventory_file: str | Path):
        self.env = {**os.environ, "AUTOCODE_INVENTORY": str(inventory_file)}

    def command(self, *args: str, timeout: float = 1500) -> tuple[str, float]:
        """`pyinfra inventory.py ARGS`: its stdout and the seconds it took."""
        started = time.monotonic()
        proc = subprocess.run([PYINFRA, "inventory.py", *args], cwd=REPO, env=self.env,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        elapsed = time.monotonic() - started
        if proc.returncode != 0:
            raise DeployFailed(f"pyinfra {' '.join(args)} failed:\n{proc.stderr[-6000:]}")
        return proc.stdout, elapsed

    def run(self, *args: str, timeout: float = 1500) -> tuple[dict, float]:
        """The deploy (`deploy.py --json`), an apply unless `--dry` is among the args."""
        # -y skips change detection, which a dry plan is for; an apply needs it.
        out, elapsed = self.command("deploy.py", *([] if "--dry" in args else ["-y"]),
                                    "--json", *args, timeout=timeout)
        return json.loads(out), elapsed


def site_inventory(lab_inventory: Path, folder: Path, **data) -> Path:
    """The lab's inventory file with `data` set (as a site would set it), written into
    `folder`; the Vault keys file still the lab's."""
    import yaml

    doc = yaml.safe_load(lab_inventory.read_text())
    doc["data"]["vault_keys_file"] = str(lab_inventory.with_name(
        f"{lab_inventory.stem}.vault-keys.json"))
    doc["data"].update(data)
    inventory = folder / "inventory.yaml"
    inventory.write_text(yaml.safe_dump(doc, sort_keys=False))
    return inventory


def changed_hosts(result: dict) -> dict[str, set[str]]:
    """Operation name -> hosts it changed (or, in a dry run, would change).

    Counts `hosts_with_change` in the plan, as Molecule's idempotence step does, and for
    a real run also every host an operation reported as changed."""
    out: dict[str, set[str]] = {}
    for op in result["plan"]:
        if op["hosts_with_change"]:
            out.setdefault(op["name"], set()).update(op["hosts_with_change"])
    for op in (result.get("results") or {}).get("operations", []):
        if op["success"]:
            out.setdefault(op["name"], set()).update(op["success"])
    return out


def operations_per_host(result: dict) -> dict[str, int]:
    """How many operations ran on each host in an apply (changed or not)."""
    per_host: dict[str, int] = {}
    for op in result["results"]["operations"]:
        for name in op["success"] + op["no_change"]:
            per_host[name] = per_host.get(name, 0) + 1
    return per_host
