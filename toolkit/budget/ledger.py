"""The budget's state beside the stack's uptime (`$LAB_HOME/stacks/<stack>/budget.json`; on the tracker, the copy
`lab up` hands it): where the period and the hour clock start, this period's `--budget`, and what the guard did."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

from toolkit.budget.spend import STOP, Ledger, Limits, Verdict, decide, period_key
from toolkit.config import paths
from toolkit.cost import uptime
from toolkit.errors import LabError

FILE = "budget.json"


def path_of(stack: str) -> Path:
    return paths.stack_home(stack) / FILE


def read(path: Path) -> Ledger:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Ledger()
    return Ledger.from_dict(raw.get("ledger", raw) if isinstance(raw, dict) else {})


def write(path: Path, ledger: Ledger, extra: dict[str, Any] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"ledger": ledger.as_dict(), **(extra or {})}, indent=1), encoding="utf-8")
    partial.replace(path)


def verdict(settings: Any, now: float | None = None) -> Verdict:
    """The stack's budget now, from this machine's records (`lab status`, `lab cost`, `lab up`)."""
    now = time.time() if now is None else now
    return decide(Limits.of(settings), read(path_of(settings.stack)), uptime.periods(settings.stack), now)


def before_up(settings: Any, budget: float | None, now: float | None = None) -> Ledger:
    """What `lab up` may do: refused (one line, the override named) when the budget is spent or the guard stopped
    the lab for it, unless `--budget USD` sets this period's budget above its spend; the ledger to keep once up."""
    now = time.time() if now is None else now
    limits = Limits.of(settings)
    ledger = read(path_of(settings.stack))
    periods = uptime.periods(settings.stack)
    if budget is not None and budget <= 0:
        raise LabError(f"--budget must be more than 0, got {budget:g}", hint="give this period's budget in USD")
    was_up = bool(periods) and periods[-1].down is None
    fired_for_budget = bool(ledger.fired and ledger.fired.get("budget")) and limits.budget_usd is not None
    new_period = not was_up or fired_for_budget or budget is not None
    found = decide(limits, ledger, periods, now)
    spent = found.budget_usd is not None and found.spend_usd >= found.budget_usd
    if budget is None and (fired_for_budget or (spent and not new_period) or (spent and limits.period == "month")):
        raise LabError(
            f"the budget is spent: {_why(found.reason, ledger)}; nothing was started",
            hint="raise lab:budgetUsd, or give this period a budget: lab up --budget USD",
        )
    start = now if new_period and limits.period == "up" else ledger.period_from or now
    kept = Ledger(period_from=start, hours_from=now, fired=None)
    override_for = period_key(limits, kept, now)
    if budget is not None:
        spend_now = found.spend_usd if limits.period == "month" else 0.0
        if budget <= spend_now:
            raise LabError(
                f"--budget {budget:g} is not more than this period's spend (${spend_now:.2f})",
                hint="give a budget above what is spent",
            )
        return Ledger(start, now, budget, override_for, None)
    if ledger.override_for == override_for:
        return Ledger(start, now, ledger.override_usd, override_for, None)
    return kept


def _why(reason: str, ledger: Ledger) -> str:
    if ledger.fired:
        return f"the budget guard stopped the lab ({ledger.fired.get('reason', '?')})"
    return reason


def after_up(settings: Any, kept: Ledger) -> None:
    write(path_of(settings.stack), kept, {"limits": Limits.of(settings).as_dict()})


def fired(path: Path, ledger: Ledger, found: Verdict, did: list[str], now: float | None = None) -> Ledger:
    """Record that the guard stopped the lab: when, why, what it did."""
    record = {
        "at": time.time() if now is None else now,
        "reason": found.reason,
        "budget": found.budget_usd is not None and found.spend_usd >= found.budget_usd,
        "did": did,
        "state": STOP,
    }
    changed = Ledger(ledger.period_from, ledger.hours_from, ledger.override_usd, ledger.override_for, record)
    raw: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        raw = json.loads(path.read_text(encoding="utf-8"))
    write(path, changed, {k: v for k, v in raw.items() if k != "ledger"} if isinstance(raw, dict) else None)
    return changed


# -- the tracker's guard (ssh, gcp): its record taken into this machine's ---------------------------------------
STOPPED_RESOURCES = ("worker", "worker GPU", "worker address")  # what stops costing when the guard stops workers


def fired_of(record: dict[str, Any], mine: Ledger) -> dict[str, Any] | None:
    """The `fired` record of the tracker's budget record (`toolkit.budget.tracker.handed`, with what its guard did),
    None when its guard has not fired, or fired in a period before this machine's last `lab up` (a record that
    `lab up` could not hand over is stale)."""
    fired_record = (record.get("ledger") or {}).get("fired") if isinstance(record, dict) else None
    if not isinstance(fired_record, dict) or not isinstance(fired_record.get("at"), int | float):
        return None
    handed_from = (record.get("ledger") or {}).get("hours_from")
    if mine.hours_from is not None and isinstance(handed_from, int | float) and handed_from < mine.hours_from:
        return None
    return fired_record


def take_fired(stack: str, record: dict[str, Any]) -> dict[str, Any] | None:
    """Take the tracker guard's `fired` record into this machine's records (`lab status`, `lab cost`, `lab up`): the
    ledger says the guard stopped the lab (when, why, what it did), and the workers' uptime ends when it stopped
    them (the tracker, its disks, and the workers' disks go on). Once only: the record taken, or None."""
    path = path_of(stack)
    mine = read(path)
    found = fired_of(record, mine)
    if found is None:
        return None
    if mine.fired and mine.fired.get("at") == found["at"]:
        return mine.fired  # taken already
    taken = {**found, "where": "tracker"}
    raw: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        raw = json.loads(path.read_text(encoding="utf-8"))
    changed = Ledger(mine.period_from, mine.hours_from, mine.override_usd, mine.override_for, taken)
    write(path, changed, {k: v for k, v in raw.items() if k != "ledger"} if isinstance(raw, dict) else None)
    uptime.record_stop(stack, float(found["at"]), lambda line: line.resource not in STOPPED_RESOURCES)
    return taken


def sync(lab: Any) -> dict[str, Any] | None:
    """Take the lab's remote guard's `fired` record into this machine's records when the stack has a budget or an
    hour limit (`lab status`, `lab cost`, `lab up`); the record taken, None when there is none to take. A LabError
    when the tracker cannot be asked."""
    if not Limits.of(lab.settings).any:
        return None
    record = lab.budget_record()
    return take_fired(lab.stack, record) if record else None


def describe_fired(record: dict[str, Any]) -> str:
    """One line: when and why the guard stopped the lab."""
    import datetime as dt

    at = record.get("at")
    when = dt.datetime.fromtimestamp(float(at), dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if at else "?"
    where = " on the tracker" if record.get("where") == "tracker" else ""
    return f"the budget guard{where} stopped the lab at {when}: {record.get('reason', '?')}"
