"""What a budget period has spent and what to do about it: `lab cost`'s uptime x price (`toolkit.cost.uptime`), over
the part of each uptime period inside the budget period, against `lab:budgetUsd`; and the hours since the last
`lab up` against `lab:maxHours`."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

from toolkit.cost.uptime import Period

WARN_AT = 0.8  # the share of the budget (or of the hours) from which the lab warns
OK, WARN, STOP = "ok", "warn", "stop"


@dataclass(frozen=True)
class Limits:
    budget_usd: float | None
    period: str  # "up" or "month"
    max_hours: float | None

    @classmethod
    def of(cls, settings: Any) -> Limits:
        return cls(settings.budget_usd, settings.budget_period, settings.max_hours)

    @property
    def any(self) -> bool:
        return self.budget_usd is not None or self.max_hours is not None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Ledger:
    """Where the budget period and the hour clock start, a budget set for this period (`lab up --budget`), and
    what the guard did (None until it fires)."""

    period_from: float | None = None  # the `lab up` that started the lab (budget period `up`)
    hours_from: float | None = None  # the last `lab up` (lab:maxHours)
    override_usd: float | None = None
    override_for: str | None = None  # the period the override holds for (its key)
    fired: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Ledger:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


@dataclass(frozen=True)
class Verdict:
    state: str  # ok, warn or stop
    spend_usd: float
    budget_usd: float | None
    since: float
    hours: float
    max_hours: float | None
    reason: str  # why it warns or stops; empty when ok

    @property
    def left_usd(self) -> float | None:
        return None if self.budget_usd is None else max(0.0, self.budget_usd - self.spend_usd)

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "left_usd": self.left_usd}

    def line(self) -> str:
        """One line for people: the spend against the budget, the hours against the limit, and why it warns."""
        since = dt.datetime.fromtimestamp(self.since, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        parts = []
        if self.budget_usd is not None:
            share = f" ({self.spend_usd / self.budget_usd:.0%})" if self.state == WARN and self.budget_usd else ""
            parts.append(
                f"${self.spend_usd:.2f} of ${self.budget_usd:.2f} spent{share} since {since}, ${self.left_usd:.2f} left"
            )
        else:
            parts.append(f"${self.spend_usd:.2f} spent since {since} (no lab:budgetUsd)")
        if self.max_hours is not None:
            share = f" ({self.hours / self.max_hours:.0%})" if self.state == WARN and self.max_hours else ""
            parts.append(f"workers up {self.hours:.2f} of {self.max_hours:g} h{share}")
        if self.state == WARN:  # the line says "budget" and "warning" once: callers print it as it is
            return "budget warning: " + "; ".join(parts)
        head = "budget: " + "; ".join(parts)
        if self.state == STOP:
            return f"{head} (REACHED: {self.reason})"
        return head


def month_start(now: float) -> float:
    day = dt.datetime.fromtimestamp(now, dt.UTC)
    return dt.datetime(day.year, day.month, 1, tzinfo=dt.UTC).timestamp()


def period_key(limits: Limits, ledger: Ledger, now: float) -> str:
    """The budget period `now` is in: the month (2026-12) or the `lab up` that started it."""
    if limits.period == "month":
        return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m")
    return f"up@{ledger.period_from or 0:.0f}"


def period_start(limits: Limits, ledger: Ledger, now: float) -> float:
    if limits.period == "month":
        return month_start(now)
    return ledger.period_from or 0.0


def spent(periods: list[Period], since: float, now: float) -> float:
    """`lab cost`'s uptime x price of every period, counted from `since` (a period that began earlier is counted
    from `since`; one that ended before is not counted)."""
    return sum(
        dataclasses.replace(p, up=max(p.up, since)).cost(now) for p in periods if p.down is None or p.down > since
    )


def hours(periods: list[Period], ledger: Ledger, now: float) -> float:
    """How long the workers have run since the last `lab up` (0 when the lab is down): until now, or until the
    guard stopped them."""
    current = periods[-1] if periods and periods[-1].down is None else None
    if current is None:
        return 0.0
    start = current.up if ledger.hours_from is None else ledger.hours_from
    stopped = fired_at(ledger)
    end = now if stopped is None else min(now, stopped)
    return max(0.0, end - start) / 3600


def fired_at(ledger: Ledger) -> float | None:
    """When the guard stopped the lab (None: it has not, since the last `lab up`)."""
    at = (ledger.fired or {}).get("at")
    return float(at) if isinstance(at, int | float) else None


def budget_of(limits: Limits, ledger: Ledger, now: float) -> float | None:
    if ledger.override_usd is not None and ledger.override_for == period_key(limits, ledger, now):
        return float(ledger.override_usd)
    return limits.budget_usd


def decide(limits: Limits, ledger: Ledger, periods: list[Period], now: float) -> Verdict:
    """ok, warn (80% of the budget or of the hours) or stop (either reached)."""
    since = period_start(limits, ledger, now)
    spend = spent(periods, since, now)
    budget = budget_of(limits, ledger, now)
    up_hours = hours(periods, ledger, now)
    reached, near = [], []
    if budget is not None:
        if spend >= budget:
            reached.append(f"the budget of ${budget:.2f} is spent (${spend:.2f})")
        elif spend >= WARN_AT * budget:
            near.append(f"${spend:.2f} of the ${budget:.2f} budget spent ({spend / budget:.0%})")
    if limits.max_hours is not None:
        if up_hours >= limits.max_hours:
            reached.append(f"the workers ran {up_hours:.2f} h, lab:maxHours is {limits.max_hours:g} h")
        elif up_hours >= WARN_AT * limits.max_hours:
            near.append(f"the workers ran {up_hours:.2f} of lab:maxHours {limits.max_hours:g} h")
    state = STOP if reached else WARN if near else OK
    reason = "; ".join(reached or near)
    return Verdict(state, round(spend, 6), budget, since, round(up_hours, 4), limits.max_hours, reason)
