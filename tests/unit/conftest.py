"""Fixtures shared by unit tests: a real OpenBao server (testing/openbao.py), and a folder
every account can traverse (for children run as another account)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from infra import vault
from testing.openbao import OpenBao


@pytest.fixture
def bao(tmp_path):
    """A started server, not initialised."""
    server = OpenBao(tmp_path / "bao").start()
    yield server
    server.stop()


@pytest.fixture
def ready(bao, tmp_path):
    """Initialised (5 shares, 3 to unseal), unsealed, admin bootstrapped, KV mounted: what
    the deploy leaves behind. (server, keys file, the deploy's admin client)."""
    keys = vault.KeysFile(tmp_path / "keys.json")
    vault.initialise(bao.api(), keys, vault.InitPlan(shares=5, threshold=3))
    vault.unseal(bao.api(), keys.load())
    vault.wait_until_active(bao.api())
    vault.bootstrap_admin(bao.api(), keys)
    admin = bao.api(keys.load()["admin_token"])
    vault.ensure_mount(admin)
    return bao, keys, admin


@pytest.fixture
def open_tree():
    """A folder every account can traverse, as the deploy's data tree is (a pytest tmp_path
    is root's alone)."""
    base = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="autocode-open-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)
