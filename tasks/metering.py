"""Spend metering at the egress proxy: which hosts are LLM APIs, what their models cost,
each worker's cap and rate limits (the `metering` section of the proxy's traffic.yaml,
built from settings/metering.py and read by autocode/traffic/metering.py), the central
ledger's folder, and the daily spend report.

The proxy is the only way out of a worker, so every LLM call an agent or any tool on the
worker makes is metered here, whatever the agent itself reports.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from infra.component import Component
from infra.components import Catalogue
from infra.operations import systemd_unit
from infra.render import render
from settings.base import Base
from settings.metering import LEDGER, Metering
from settings.runtime import Runtime

REPORT_UNITS = ("autocode-budget-report.service", "autocode-budget-report.timer")

COMPONENT = Component(
    name="metering",
    settings=Metering,
    data_tree={"orchestrator": {
        "financial/metered": ("autocode-proxy", "autocode", "750"),
    }},
    runtime_extras={"orchestrator": ("proxy",)},
)


@deploy("Spend reports")
def orchestrator(catalogue: Catalogue) -> None:
    base, runtime, metering = Base.of(host), Runtime.of(host), Metering.of(host)
    report = (f"{base.runtime_venv}/bin/autocode-budget report --day yesterday "
              f"--ledger {base.data_root}/{LEDGER} --data-root {base.data_root} "
              f"--timezone {runtime.timezone}")
    systemd_unit(name="Unit autocode-budget-report.service",
                 unit="autocode-budget-report.service", running=False, enabled=False,
                 batch=REPORT_UNITS,
                 text=render("metering/autocode-budget-report.service.j2", command=report,
                             data_root=base.data_root))
    systemd_unit(name="Unit autocode-budget-report.timer", unit="autocode-budget-report.timer",
                 batch=REPORT_UNITS,
                 text=render("metering/autocode-budget-report.timer.j2",
                             calendar=metering.budget_report_calendar))
