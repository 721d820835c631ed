"""Nothing dead in the runtime's configuration: every field of the configs the hosts read
(worker.yaml's WorkerConfig, the proxy's TrafficConfig and its parts) has a reader in
autocode/ besides its parser, so no setting is declared, validated, written by the deploy and
then read by nothing.

A reader is an attribute read (`config.max_turns`) anywhere in autocode/ outside the
functions that build the config. Matching is by name, so a field whose name is read on some
other object would pass unnoticed; it cannot flag a live field as dead.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from autocode.config import WorkerConfig
from autocode.traffic.cache import CacheConfig
from autocode.traffic.config import ElasticsearchConfig, TrafficConfig
from autocode.traffic.metering import MeteringConfig

ROOT = Path(__file__).resolve().parents[2] / "autocode"
CONFIGS = (WorkerConfig, TrafficConfig, ElasticsearchConfig, MeteringConfig, CacheConfig)
# A field declared ahead of its reader, named here with the change that gives it one (none
# now: orchestrator_url's reader is the worker's claim loop, autocode/control/worker.py).
AWAITING_A_READER: set[str] = set()


def _is_parser(node: ast.AST) -> bool:
    return (isinstance(node, ast.FunctionDef)
            and node.name.lstrip("_").startswith(("parse", "load", "from_")))


def attribute_reads() -> set[str]:
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_parser(child):
                continue
            if isinstance(child, ast.Attribute) and isinstance(child.ctx, ast.Load):
                names.add(child.attr)
            visit(child)

    for path in ROOT.rglob("*.py"):
        visit(ast.parse(path.read_text(), str(path)))
    return names


READS = attribute_reads()


def test_the_reader_scan_sees_reads():
    assert {"max_turns", "spool_dir", "ledger_path"} <= READS
    assert "a_field_nobody_has" not in READS


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_has_a_reader(config):
    dead = {f"{config.__name__}.{f.name}" for f in dataclasses.fields(config)
            if f.name not in READS}
    assert dead - AWAITING_A_READER == set()


def test_the_awaited_reader_is_still_awaited():
    # When the reader lands, this fails: take the field off AWAITING_A_READER.
    for entry in AWAITING_A_READER:
        assert entry.split(".")[1] not in READS
