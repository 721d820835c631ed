"""Backups on real hosts: the daily unit backs up the orchestrator's metered ledger, the
unshipped spool and /etc/autocode; they are destroyed and restored with autocode-backup,
and the ledger's sum and the traffic config are back. (Vault's own snapshot restore is in
test_vault.py.) Named to sort after test_base_converge.py, whose first tests need bare
hosts."""

from __future__ import annotations

import json
import shlex

import pytest

from infra.inventory_file import group_defaults
from settings.mitmproxy import TRAFFIC_CONFIG
from tasks import metering
from testing.deploy import changed_hosts
from testing.figures import record

pytestmark = pytest.mark.lab
ORCH = group_defaults("orchestrator")
VENV = f"{ORCH['install_dir']}/venv"
LEDGER = f"{ORCH['data_root']}/{metering.LEDGER}"


def ledger_sum(ssh) -> tuple[str, int]:
    code = ("import json; from autocode.budget import BudgetLedger; "
            f"l = BudgetLedger({LEDGER!r}); rows = l.charges(); "
            "print(json.dumps([str(sum(__import__('decimal').Decimal(r['amount_usd']) "
            "for r in rows)), len(rows)]))")
    return tuple(json.loads(ssh("orchestrator", f"{VENV}/bin/python -c "
                                f"{shlex.quote(code)}").stdout))


def test_back_up_destroy_restore_and_the_ledger_and_config_are_back(lab, ssh, pyinfra,
                                                                   converged):
    # Something to keep: one metered call, so the ledger exists and holds a charge.
    ssh("worker1", "curl -sS -o /dev/null -H 'x-api-key: k' -H 'content-type: "
        "application/json' -d '{\"model\": \"m\", \"max_tokens\": 8, \"messages\": "
        f"[{{\"role\": \"user\", \"content\": \"hi\"}}]}}' "
        f"https://{lab.internet.uplink_addr}/v1/messages")
    ssh("orchestrator", f"timeout 30 sh -c 'until test -s {LEDGER}; do sleep 0.5; done'")
    before = ledger_sum(ssh)
    assert before[1] >= 1
    ssh("orchestrator", "systemctl start autocode-backup.service")
    listed = ssh("orchestrator", f"{VENV}/bin/autocode-backup list").stdout.split()
    assert listed, "no backup made"
    good_config = ssh("orchestrator", f"cat {TRAFFIC_CONFIG}").stdout
    # Disaster: the ledger and a config file gone.
    ssh("orchestrator", f"systemctl stop autocode-mitmproxy && rm -f {LEDGER}* && "
        f"rm -f {TRAFFIC_CONFIG}")
    out = ssh("orchestrator", f"{VENV}/bin/autocode-backup restore --from latest").stdout
    assert f"restored {LEDGER}" in out and f"restored {TRAFFIC_CONFIG}" in out
    ssh("orchestrator", "systemctl start autocode-mitmproxy")
    assert ledger_sum(ssh) == before
    assert ssh("orchestrator", f"cat {TRAFFIC_CONFIG}").stdout == good_config
    assert ssh("orchestrator", f"stat -c %a {ORCH['data_root']}/backups/autocode").stdout \
        .strip() == "700"
    again, _ = pyinfra.run()
    assert changed_hosts(again) == {}, changed_hosts(again)
    record("backup restore: ledger rows back", f"{before[1]} rows, {before[0]} USD")
