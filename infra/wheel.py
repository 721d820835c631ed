"""Building the autocode wheel the deploy installs on hosts, once per source version.

The wheel is reproducible (SOURCE_DATE_EPOCH), so the same sources give the same bytes and
a re-apply uploads nothing; it is cached under build/wheels/ by a digest of the sources.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "build" / "wheels"


def source_digest() -> str:
    digest = hashlib.sha256()
    files = [REPO / "pyproject.toml", *sorted((REPO / "autocode").rglob("*.py"))]
    for path in files:
        if "__pycache__" in path.parts:
            continue
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@cache
def autocode_wheel() -> Path:
    target = CACHE / source_digest()
    wheels = list(target.glob("autocode-*.whl"))
    if wheels:
        return wheels[0]
    with tempfile.TemporaryDirectory() as tmp:
        # Built from a copy: setuptools keeps scratch folders (build/lib, build/bdist.*)
        # beside the sources, and one left by an interrupted build breaks the next.
        source = Path(tmp) / "src"
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO / name, source / name)
        shutil.copytree(REPO / "autocode", source / "autocode",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp,
             str(source)],
            capture_output=True, text=True, env={**os.environ, "SOURCE_DATE_EPOCH": "315532800"},
        )
        if proc.returncode != 0:
            raise RuntimeError(f"building the autocode wheel failed:\n{proc.stderr[-3000:]}")
        built = next(Path(tmp).glob("autocode-*.whl"))
        target.mkdir(parents=True, exist_ok=True)
        shutil.move(str(built), target / built.name)
    return target / built.name
