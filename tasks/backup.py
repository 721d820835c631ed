"""Backups of each host's critical data (`autocode-backup`, autocode/backup.py): the spend
ledgers, the traffic spool not yet shipped, the daily reports and the config folder, by
one daily timer into `<data_root>/backups/autocode/<time>/`, the newest `backup_keep` kept.
Vault's and Elasticsearch's snapshots are their own components', beside it under backups/.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from infra.component import Component
from infra.operations import systemd_unit
from infra.render import render
from infra.validation import Problems, check_calendar, is_number
from tasks import runtime

UNITS = ("autocode-backup.service", "autocode-backup.timer")


def check(problems: Problems, role: str, data) -> None:
    keep = data.get("backup_keep")
    if not (is_number(keep) and int(keep) == keep and keep >= 1):
        problems.add("backup_keep", f"{keep!r}: give a whole number of backups to keep, "
                     "at least 1, e.g. 14")
    check_calendar(problems, "backup_calendar", data.get("backup_calendar"), "*-*-* 02:40:00")


COMPONENT = Component(
    name="backup",
    settings={"backup_calendar": "*-*-* 02:40:00", "backup_keep": 14},
    check=check,
    data_tree={role: {"backups": ("root", "root", "755"),
                      "backups/autocode": ("root", "root", "700")}
               for role in ("orchestrator", "worker")},
    runtime_extras={"orchestrator": (), "worker": ()},
)


@deploy("Backups")
def apply() -> None:
    data = host.data
    command = (f"{runtime.venv_path()}/bin/autocode-backup create --data-root "
               f"{data.data_root} --config-dir {data.config_dir} --keep {int(data.backup_keep)}")
    systemd_unit(name="Unit autocode-backup.service", unit="autocode-backup.service",
                 running=False, enabled=False, batch=UNITS,
                 text=render("backup/autocode-backup.service.j2", command=command,
                             data_root=data.data_root))
    systemd_unit(name="Unit autocode-backup.timer", unit="autocode-backup.timer", batch=UNITS,
                 text=render("backup/autocode-backup.timer.j2",
                             calendar=data.backup_calendar))


orchestrator = worker = apply
