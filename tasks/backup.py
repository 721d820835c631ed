"""Backups of each host's critical data (`autocode-backup`, autocode/backup.py): the spend
ledgers, the traffic spool not yet shipped, the daily reports and the config folder, by
one daily timer into `<data_root>/backups/autocode/<time>/`, the newest `backup_keep` kept.
Vault's and Elasticsearch's snapshots are their own components', beside it under backups/.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from infra.component import Component
from infra.components import Catalogue
from infra.operations import systemd_unit
from infra.render import render
from settings.backup import Backup
from settings.base import Base

UNITS = ("autocode-backup.service", "autocode-backup.timer")

COMPONENT = Component(
    name="backup",
    settings=Backup,
    data_tree={role: {"backups": ("root", "root", "755"),
                      "backups/autocode": ("root", "root", "700")}
               for role in ("orchestrator", "worker")},
    runtime_extras={"orchestrator": (), "worker": ()},
)


@deploy("Backups")
def apply(catalogue: Catalogue) -> None:
    backup, base = Backup.of(host), Base.of(host)
    command = (f"{base.runtime_venv}/bin/autocode-backup create --data-root "
               f"{base.data_root} --config-dir {base.config_dir} --keep {backup.backup_keep}")
    systemd_unit(name="Unit autocode-backup.service", unit="autocode-backup.service",
                 running=False, enabled=False, batch=UNITS,
                 text=render("backup/autocode-backup.service.j2", command=command,
                             data_root=base.data_root))
    systemd_unit(name="Unit autocode-backup.timer", unit="autocode-backup.timer", batch=UNITS,
                 text=render("backup/autocode-backup.timer.j2",
                             calendar=backup.backup_calendar))


orchestrator = worker = apply
