"""`lab cost`: what the lab costs now (uptime x price per resource) and what each sweep's trials cost."""

from __future__ import annotations

import json
import time
from typing import Any

from toolkit.cli import options
from toolkit.config.stack import stack_path
from toolkit.console import err, out
from toolkit.cost import uptime
from toolkit.errors import LabError
from toolkit.sweeps import studies


def _current(stack: str, now: float) -> dict[str, Any] | None:
    period = uptime.current(stack)
    if period is None:
        return None
    hours = period.hours(now)
    return {
        "up_since": period.up,
        "hours": round(hours, 4),
        "usd_per_hour": round(sum(line.usd_per_hour or 0.0 for line in period.lines), 6),
        "usd_so_far": round(period.cost(now), 6),
        "resources": [
            {**line.as_dict(), "hours": round(hours, 4), "usd": round(hours * (line.usd_per_hour or 0.0), 6)}
            for line in period.lines
        ],
    }


def _sweeps(stack_name: str, target: str) -> tuple[list[dict[str, Any]], str | None]:
    """Every sweep's trial cost, or why the sweeps could not be read (the lab is down, say)."""
    from toolkit import labs

    try:
        with labs.lab_class(target).open(stack_name).study_storage() as storage:
            found = studies.summaries(storage)
    except LabError as exc:
        return [], exc.one_line()
    return [
        {
            "sweep": s.name,
            "trials": s.trials,
            "trial_hours": round(s.trial_hours, 4),
            "usd": None if s.cost_usd is None else round(s.cost_usd, 6),
            "last_activity": s.last_activity.isoformat() if s.last_activity else None,
        }
        for s in found
    ], None


def cost(
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
    as_json: options.Json = False,
) -> None:
    """What the lab costs: each resource's uptime x price while it is up, and each sweep's trials
    (their slots' share of the workers' price, also each run's `cost_usd` metric in MLflow)."""
    from toolkit import labs
    from toolkit.cost import prices

    chosen = labs.target_of(stack_name, local=local, target=options.target_name(target))
    stack = stack_path(stack_name)[0]
    guard_unread = _take_guard(stack_name, chosen)  # before the periods: the workers' uptime may end earlier
    now = time.time()
    periods = uptime.periods(stack)
    past = sum(p.cost(now) for p in periods if p.down is not None)
    current = _current(stack, now)
    sweeps, unreadable = _sweeps(stack_name, chosen)
    document = {
        "stack": stack,
        "target": chosen,
        "now": current,
        "all_periods_usd": round(past + (current["usd_so_far"] if current else 0.0), 6),
        "periods": len(periods),
        "sweeps": sweeps,
        "sweeps_unreadable": unreadable,
        "prices": prices.source_line(),
        "prices_pending": _pending_prices(uptime.current(stack)),
        "budget": _budget(stack_name, chosen),
    }
    if guard_unread:
        document["budget_guard_unread"] = guard_unread
    if as_json:
        out().print_json(json.dumps(document))
        return
    _show(document, labs.lab_class(chosen).uptime_note)


def _pending_prices(period: uptime.Period | None) -> str | None:
    """A price table changed after the lab went up: its prices count from the next `lab up` (the period running
    keeps the prices it started with, so what was spent does not change afterwards); None when nothing waits."""
    from toolkit.cost import prices

    table = prices.user_table()
    try:
        changed = table.stat().st_mtime
    except OSError:
        return None
    if period is None or changed <= period.up:
        return None
    return (
        f"{table} changed after this `lab up`: its prices count from the next `lab up` "
        "(the lab's cost so far and the budget use the prices it went up with)"
    )


def _take_guard(stack_name: str, target: str) -> str | None:
    """ssh, gcp: what the tracker's budget guard did, taken into this machine's records (the workers' uptime ends
    when it stopped them); why it could not be asked, if so."""
    from toolkit import labs
    from toolkit.budget import ledger
    from toolkit.budget.spend import Limits
    from toolkit.config import stack as stacks

    try:
        settings = stacks.load(stack_name, target=target)[1].settings
        if settings is None or not Limits.of(settings).any:
            return None
        ledger.sync(labs.lab_class(target).open(stack_name))
    except LabError as exc:
        return exc.one_line()
    return None


def _budget(stack_name: str, target: str) -> dict[str, Any] | None:
    """The budget period's spend against lab:budgetUsd and the hours against lab:maxHours (None: neither is set)."""
    from toolkit.budget import ledger
    from toolkit.config import stack as stacks

    settings = stacks.load(stack_name, target=target)[1].settings
    if settings is None or (settings.budget_usd is None and settings.max_hours is None):
        return None
    found = ledger.verdict(settings)
    fired = ledger.read(ledger.path_of(settings.stack)).fired
    line = found.line() + (f"\n{ledger.describe_fired(fired)}" if fired else "")
    return {**found.as_dict(), "line": line, "guard": fired}


def _show(document: dict[str, Any], not_up: str) -> None:
    from rich.table import Table

    current = document["now"]
    if current is None:
        note = not_up
        out().print(f"{document['stack']}: nothing priced is up now ({note})")
    else:
        table = Table(title=f"{document['stack']} now: up {current['hours']:.2f} h", title_justify="left")
        for column in ("resource", "count", "$/hour", "hours", "$ so far"):
            table.add_column(column, justify="left" if column == "resource" else "right")
        for line in current["resources"]:
            rate = "-" if line["usd_per_hour"] is None else f"{line['usd_per_hour']:.4f}"
            table.add_row(
                f"{line['resource']} {line['item']}",
                str(line["count"]),
                rate,
                f"{line['hours']:.2f}",
                f"{line['usd']:.2f}",
            )
        table.add_row("total", "", f"{current['usd_per_hour']:.4f}", "", f"{current['usd_so_far']:.2f}")
        out().print(table)
        out().print("workers that powered themselves off (idle) cost less than this: only their disks go on")
    if document["periods"]:
        count = document["periods"]
        out().print(f"every time it was up ({count} period{'s' * (count != 1)}): ${document['all_periods_usd']:.2f}")
    if document["sweeps_unreadable"]:
        err().print(f"sweeps: {document['sweeps_unreadable']}")
    elif document["sweeps"]:
        table = Table(title="sweeps", title_justify="left")
        for column in ("sweep", "trials", "trial hours", "$"):
            table.add_column(column, justify="left" if column == "sweep" else "right")
        for sweep in document["sweeps"]:
            usd = "not priced" if sweep["usd"] is None else f"{sweep['usd']:.4f}"
            table.add_row(sweep["sweep"], str(sweep["trials"]), f"{sweep['trial_hours']:.3f}", usd)
        out().print(table)
    if document["budget"]:
        out().print(document["budget"]["line"], markup=False)
    if document.get("budget_guard_unread"):
        err().print(f"the tracker's budget guard could not be asked: {document['budget_guard_unread']}", markup=False)
    out().print(document["prices"])
    if document["prices_pending"]:
        out().print(f"note: {document['prices_pending']}", markup=False, highlight=False)
