"""autocode-budget: the orchestrator's daily spend report.

    autocode-budget report [--day YYYY-MM-DD|today|yesterday] [--ledger PATH]
                           [--data-root DIR] [--timezone ZONE] [--diff-threshold 0.10]

Per worker, per agent and per model: requests, tokens and the metered cost from the
proxy's central ledger (what really left the workers), beside the cost the agents reported
themselves, read from the workers' forwarded logs (`logs/workers/<worker>/`: each charge a
worker records is also one JSON log line with `extra.charge`). A worker whose two figures
differ by more than the threshold (a share of the metered cost) is flagged. Written to
`<data_root>/financial/reports/spend-<day>.{json,csv,svg,ndjson}`; the SVG is a bar chart
per worker, metered beside reported; the NDJSON holds the same figures one event per line
(a `spend` object per worker and per worker/agent/model), which Filebeat ships to
Elasticsearch with the other logs. Exit status: 0 written, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from autocode.budget import BudgetLedger

LEDGER = Path("financial/metered/ledger.sqlite3")
# The orchestrator's own models' charges (autocode/serving/accounting.py).
SERVED_LEDGER = Path("financial/served/ledger.sqlite3")
REPORTS = Path("financial/reports")
WORKER_LOGS = Path("logs/workers")
MICRO = Decimal("0.000001")
TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


def usd(amount: Decimal) -> str:
    """An amount as plain digits without trailing zeros: 0.2, 100, 0.000001."""
    text = format(amount.normalize(), "f")
    return "0" if text in ("-0", "") else text


def reported_charges(logs_dir: Path, day: date, tz: ZoneInfo) -> dict[str, Decimal]:
    """Agent-reported USD per worker on `day`, from each worker's forwarded JSON log
    lines; a charge logged twice (a line forwarded again) counts once, by its key."""
    totals: dict[str, Decimal] = defaultdict(Decimal)
    if not logs_dir.is_dir():
        return {}
    for folder in sorted(p for p in logs_dir.iterdir() if p.is_dir()):
        seen: set[str] = set()
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or path.suffix == ".gz":
                continue
            with path.open(encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    start = line.find("{")
                    if start < 0 or '"charge"' not in line:
                        continue
                    try:
                        record = json.loads(line[start:]).get("record", {})
                        charge = record["extra"]["charge"]
                        when = datetime.fromtimestamp(record["time"]["timestamp"], tz).date()
                        # To the micro-dollar, rounded up, as the ledger charged it.
                        amount = Decimal(str(charge["amount_usd"])).quantize(
                            MICRO, rounding=ROUND_CEILING)
                    except (ValueError, KeyError, TypeError, ArithmeticError):
                        continue
                    if when != day or charge.get("key") in seen:
                        continue
                    seen.add(charge.get("key"))
                    totals[folder.name] += amount
    return dict(totals)


def build_report(ledger: BudgetLedger, logs_dir: Path, day: date,
                 threshold: Decimal, served: BudgetLedger | None = None) -> dict[str, Any]:
    """`served`: the ledger of the orchestrator's own models, counted as metered too (a
    worker's spend is what left it for any model, remote or local)."""
    rows = [r for source in (ledger, served) if source is not None
            for r in source.charges(day) if r["source"] == "metered"]
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in rows:
        detail = row.get("detail") or {}
        key = (row["worker_id"], row["agent"], str(detail.get("model") or "unknown"))
        group = groups.setdefault(key, {"worker": key[0], "agent": key[1], "model": key[2],
                                        "requests": 0, **dict.fromkeys(TOKENS, 0),
                                        "metered_usd": Decimal(0), "estimated": 0,
                                        "unknown_model": 0})
        group["requests"] += 1
        for name in TOKENS:
            group[name] += int(detail.get(name) or 0)
        group["metered_usd"] += Decimal(row["amount_usd"])
        group["estimated"] += bool(detail.get("estimated"))
        group["unknown_model"] += bool(detail.get("unknown_model"))
    reported = reported_charges(logs_dir, day, ledger.tz)
    metered: dict[str, Decimal] = defaultdict(Decimal)
    for group in groups.values():
        metered[group["worker"]] += group["metered_usd"]
    workers = []
    for name in sorted(set(metered) | set(reported)):
        m, r = metered.get(name, Decimal(0)), reported.get(name)
        difference = None if r is None else r - m
        flagged = difference is not None and abs(difference) > threshold * max(m, Decimal(0))
        workers.append({"worker": name, "metered_usd": usd(m),
                        "agent_reported_usd": None if r is None else usd(r),
                        "difference_usd": None if difference is None else usd(difference),
                        "flagged": flagged})
    return {
        "day": day.isoformat(), "timezone": str(ledger.tz),
        "total_metered_usd": usd(sum(metered.values(), Decimal(0))),
        "diff_threshold": str(threshold),
        "workers": workers,
        "by_model": [{**g, "metered_usd": usd(g["metered_usd"])} for _, g in
                     sorted(groups.items())],
    }


def chart_svg(report: dict[str, Any]) -> str:
    """Bars per worker: metered (dark) beside agent-reported (light)."""
    workers = report["workers"]
    values = [Decimal(w["metered_usd"]) for w in workers] + [
        Decimal(w["agent_reported_usd"]) for w in workers if w["agent_reported_usd"]]
    top = max(values, default=Decimal(0)) or Decimal(1)
    width, bar, gap, height = 60 + 90 * max(len(workers), 1), 30, 30, 240
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 60}" '
             f'font-family="sans-serif" font-size="12">',
             f'<text x="10" y="16">Spend on {escape(report["day"])} ({escape(report["timezone"])})'
             f': metered (dark) and agent-reported (light), USD</text>']
    for n, w in enumerate(workers):
        x = 40 + n * (2 * bar + gap)
        for offset, value, colour in ((0, w["metered_usd"], "#1f4e79"),
                                      (bar, w["agent_reported_usd"], "#9dc3e6")):
            if value is None:
                continue
            h = float(Decimal(value) / top) * (height - 40)
            y = height - h
            parts.append(f'<rect x="{x + offset}" y="{y:.1f}" width="{bar - 2}" '
                         f'height="{h:.1f}" fill="{colour}"><title>{escape(value)}</title></rect>')
        label = escape(w["worker"]) + (" !" if w["flagged"] else "")
        parts.append(f'<text x="{x}" y="{height + 16}">{label}</text>')
        parts.append(f'<text x="{x}" y="{height + 32}">{escape(w["metered_usd"])}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_report(report: dict[str, Any], reports_dir: Path) -> list[Path]:
    reports_dir.mkdir(parents=True, exist_ok=True)
    stem = reports_dir / f"spend-{report['day']}"
    paths = [stem.with_suffix(".json"), stem.with_suffix(".csv"), stem.with_suffix(".svg"),
             stem.with_suffix(".ndjson")]
    _atomic(paths[0], json.dumps(report, indent=2) + "\n")
    fields = ["worker", "agent", "model", "requests", *TOKENS, "metered_usd", "estimated",
              "unknown_model"]
    tmp = paths[1].with_name(f".{paths[1].name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(report["by_model"])
    os.replace(tmp, paths[1])
    _atomic(paths[2], chart_svg(report))
    _atomic(paths[3], "".join(json.dumps(event, sort_keys=True) + "\n"
                              for event in report_events(report)))
    return paths


def report_events(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report as events for Elasticsearch: one per worker (metered beside reported) and
    one per worker/agent/model, each a `spend` object. Amounts stay decimal strings (the
    index maps them as scaled floats, to the micro-dollar); `@timestamp` is the report's day
    at midnight in its time zone, so a day's events sort under that day whenever shipped.
    `spend.id` is a digest of the event: the report written again with the same figures
    (the file replaced, so read again) makes the same ids, which Elasticsearch refuses as
    duplicates; changed figures are new events beside the old."""
    start = datetime.combine(date.fromisoformat(report["day"]), datetime.min.time(),
                             tzinfo=ZoneInfo(report["timezone"]))
    common = {"day": report["day"], "timezone": report["timezone"]}
    events = [{"@timestamp": start.isoformat(), "spend": {**common, "kind": "worker", **row}}
              for row in report["workers"]]
    events += [{"@timestamp": start.isoformat(), "spend": {**common, "kind": "model", **row}}
               for row in report["by_model"]]
    for event in events:
        digest = hashlib.sha256(json.dumps(event, sort_keys=True).encode()).hexdigest()
        event["spend"]["id"] = f"spend-{digest[:32]}"
    return events


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _day(text: str, tz: ZoneInfo) -> date:
    today = datetime.now(tz).date()
    if text == "today":
        return today
    if text == "yesterday":
        return today - timedelta(days=1)
    return date.fromisoformat(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="autocode-budget",
                                     description="The orchestrator's daily spend report.")
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="write (and print) one day's spend report")
    report.add_argument("--day", default="today", help="YYYY-MM-DD, today or yesterday")
    report.add_argument("--data-root", type=Path, default=Path("/mnt/data/autocode"))
    report.add_argument("--ledger", type=Path, default=None,
                        help=f"the metered ledger (default <data-root>/{LEDGER})")
    report.add_argument("--served-ledger", type=Path, default=None,
                        help=f"the orchestrator's own models' ledger (default "
                             f"<data-root>/{SERVED_LEDGER}; read when it exists)")
    report.add_argument("--timezone", default="UTC", help="the zone budget days start in")
    report.add_argument("--diff-threshold", default="0.10",
                        help="flag a worker whose reported cost differs from the metered by "
                             "more than this share of it (default 0.10)")
    args = parser.parse_args(argv)
    try:
        tz = ZoneInfo(args.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        print(f"autocode-budget: --timezone {args.timezone!r} is not an IANA zone",
              file=sys.stderr)
        return 2
    try:
        day = _day(args.day, tz)
    except ValueError:
        print(f"autocode-budget: --day {args.day!r}: write YYYY-MM-DD, today or yesterday",
              file=sys.stderr)
        return 2
    try:
        threshold = Decimal(args.diff_threshold)
        assert threshold.is_finite() and threshold >= 0
    except (ArithmeticError, AssertionError):
        print(f"autocode-budget: --diff-threshold {args.diff_threshold!r} is not a share >= 0",
              file=sys.stderr)
        return 2
    ledger_path = args.ledger or args.data_root / LEDGER
    if not ledger_path.is_file():
        print(f"autocode-budget: no metered ledger at {ledger_path}; the proxy creates it "
              "with its first metered call", file=sys.stderr)
        return 2
    served_path = args.served_ledger or args.data_root / SERVED_LEDGER
    ledger = BudgetLedger(ledger_path, args.timezone)
    served = BudgetLedger(served_path, args.timezone) if served_path.is_file() else None
    try:
        built = build_report(ledger, args.data_root / WORKER_LOGS, day, threshold, served)
    finally:
        ledger.close()
        if served is not None:
            served.close()
    paths = write_report(built, args.data_root / REPORTS)
    print(json.dumps({**built, "files": [str(p) for p in paths]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
