"""autocode-backup: backups of a host's critical data that restore.

    autocode-backup create  [--data-root DIR] [--config-dir DIR] [--keep N]
    autocode-backup list    [--data-root DIR]
    autocode-backup restore --from BACKUP [--data-root DIR] [--config-dir DIR]

What one backup holds, under `<data_root>/backups/autocode/<UTC time>/` (0700, root's):

    ledgers/<path under data_root>   every spend ledger (financial/**/*.sqlite3) and the
                                     task service's database (control/*.sqlite3), copied
                                     with SQLite's online backup: consistent while in use
    repos/                           the task service's bare repositories (control/repos;
                                     git writes objects before the refs that name them)
    spool/                           the traffic spool not yet shipped (segments, checkpoint,
                                     dead letters)
    reports/                         financial/reports
    config/                          the config folder (/etc/autocode): configs, CA
                                     certificates and keys, tokens: hence 0700
    MANIFEST.json                    every file's size and sha256

Vault's and Elasticsearch's own snapshots sit beside it, under backups/vault and
backups/elasticsearch (their components take them). `create` keeps the newest `--keep`
backups (default 14) and removes older ones. `restore` checks every file against the
manifest first and changes nothing if one differs; then puts each back by a rename, so a
file is either the old or the restored one. Stop the services that write what is restored
first (autocode-mitmproxy for the spool and metered ledger, autocode-worker for a worker's
ledger, autocode-control for the task database and repositories); restore says which
files it replaced. Exit status 0, 1 a failed check or copy, 2 bad usage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path

BACKUPS = Path("backups/autocode")
SPOOL = Path("logs/traffic/spool")
REPORTS = Path("financial/reports")
REPOS = Path("control/repos")
MANIFEST = "MANIFEST.json"


class BackupError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _owner(source: Path, target: Path, owners: dict[Path, tuple[int, int, int]]) -> None:
    stat = source.stat()
    owners[target] = (stat.st_uid, stat.st_gid, stat.st_mode & 0o7777)


def _copy_sqlite(source: Path, target: Path) -> None:
    """SQLite's online backup: a consistent copy while writers go on."""
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def _copy_tree(source: Path, target: Path, owners: dict, skip: tuple[str, ...] = ()) -> None:
    if not source.is_dir():
        return
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_symlink() or not path.is_file() or relative.parts[0] in skip or \
                path.name.endswith((".sqlite3-wal", ".sqlite3-shm")):
            continue
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)
        _owner(path, destination, owners)


def create(data_root: Path, config_dir: Path, keep: int, now: datetime | None = None) -> Path:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S.%fZ")
    root = data_root / BACKUPS
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    partial = root / f".{stamp}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o700)
    owners: dict[Path, tuple[int, int, int]] = {}  # what each file had, to restore it so
    databases = [*(data_root / "financial").rglob("*.sqlite3"),
                 *(data_root / "control").glob("*.sqlite3")]
    for ledger in sorted(databases):
        copy = partial / "ledgers" / ledger.relative_to(data_root)
        _copy_sqlite(ledger, copy)
        _owner(ledger, copy, owners)
    # Shipped segments are in Elasticsearch already; what is not shipped is only here.
    _copy_tree(data_root / SPOOL, partial / "spool", owners, skip=("shipped",))
    _copy_tree(data_root / REPORTS, partial / "reports", owners)
    _copy_tree(data_root / REPOS, partial / "repos", owners)
    _copy_tree(config_dir, partial / "config", owners)
    files = {}
    for path in sorted(partial.rglob("*")):
        if path.is_file():
            uid, gid, mode = owners[path]
            files[str(path.relative_to(partial))] = {
                "size": path.stat().st_size, "sha256": _sha256(path), "uid": uid, "gid": gid,
                "mode": oct(mode)}
    (partial / MANIFEST).write_text(json.dumps({
        "created": stamp, "data_root": str(data_root), "config_dir": str(config_dir),
        "files": files}, indent=2) + "\n")
    final = root / stamp
    os.rename(partial, final)
    for old in list_backups(data_root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return final


def list_backups(data_root: Path) -> list[Path]:
    root = data_root / BACKUPS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / MANIFEST).is_file())


def verify(backup: Path) -> dict:
    try:
        manifest = json.loads((backup / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{backup}: no readable {MANIFEST} ({exc}); not a backup") from None
    bad = [name for name, meta in manifest["files"].items()
           if not (backup / name).is_file() or (backup / name).stat().st_size != meta["size"]
           or _sha256(backup / name) != meta["sha256"]]
    if bad:
        raise BackupError(f"{backup}: {len(bad)} file(s) missing or changed since the backup "
                          f"({', '.join(bad[:5])}); nothing restored")
    return manifest


def restore(backup: Path, data_root: Path, config_dir: Path) -> list[Path]:
    manifest = verify(backup)
    targets = {"ledgers": data_root, "spool": data_root / SPOOL,
               "reports": data_root / REPORTS, "repos": data_root / REPOS,
               "config": config_dir}
    restored = []
    for name in sorted(manifest["files"]):
        section, _, rest = name.partition("/")
        if section not in targets or not rest:
            continue
        target = targets[section] / rest
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_name(f".{target.name}.restoring")
        shutil.copy2(backup / name, staged)
        if section == "ledgers":  # an old WAL beside the restored file must not replay
            for suffix in ("-wal", "-shm"):
                Path(f"{target}{suffix}").unlink(missing_ok=True)
        meta = manifest["files"][name]
        if os.geteuid() == 0:  # as it was: the services reading it keep their access
            os.chown(staged, meta["uid"], meta["gid"])
        os.chmod(staged, int(meta["mode"], 8))
        os.replace(staged, target)
        restored.append(target)
    return restored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autocode-backup", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("create", "list", "restore"):
        sub = commands.add_parser(name)
        sub.add_argument("--data-root", type=Path, default=Path("/mnt/data/autocode"))
        if name != "list":
            sub.add_argument("--config-dir", type=Path, default=Path("/etc/autocode"))
        if name == "create":
            sub.add_argument("--keep", type=int, default=14, help="backups kept (default 14)")
        if name == "restore":
            sub.add_argument("--from", dest="source", type=Path, required=True,
                             help="a backup folder, or 'latest'")
    args = parser.parse_args(argv)
    if not args.data_root.is_dir():
        print(f"autocode-backup: --data-root {args.data_root} is not a folder", file=sys.stderr)
        return 2
    try:
        if args.command == "create":
            if args.keep < 1:
                print("autocode-backup: --keep must be at least 1", file=sys.stderr)
                return 2
            print(create(args.data_root, args.config_dir, args.keep))
        elif args.command == "list":
            for backup in list_backups(args.data_root):
                print(backup)
        else:
            source = args.source
            if str(source) == "latest":
                found = list_backups(args.data_root)
                if not found:
                    print("autocode-backup: no backup to restore", file=sys.stderr)
                    return 1
                source = found[-1]
            for path in restore(source, args.data_root, args.config_dir):
                print(f"restored {path}")
    except (BackupError, OSError, sqlite3.Error) as exc:
        print(f"autocode-backup: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
