"""When a stack's priced resources were up, for `lab cost`: periods from `lab up` to `lab down`, each with
the price lines it ran at, kept in the stack's folder (uptime.json)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.config import paths
from toolkit.cost.prices import PriceLine

FILE = "uptime.json"


@dataclass(frozen=True)
class Period:
    up: float
    down: float | None  # None: still up
    lines: tuple[PriceLine, ...]

    def hours(self, now: float | None = None) -> float:
        end = self.down if self.down is not None else (time.time() if now is None else now)
        return max(0.0, end - self.up) / 3600

    def cost(self, now: float | None = None) -> float:
        return self.hours(now) * sum(line.usd_per_hour or 0.0 for line in self.lines)


def _path(stack: str) -> Path:
    return paths.stack_home(stack) / FILE


def periods(stack: str) -> list[Period]:
    return read(_path(stack))


def read(path: Path) -> list[Period]:
    """The periods in an uptime file (a stack's, or the copy `lab up` hands the tracker's budget guard)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return parse(raw)


def parse(raw: Any) -> list[Period]:
    found = []
    for item in raw.get("periods", []) if isinstance(raw, dict) else []:
        try:
            found.append(
                Period(
                    up=float(item["up"]),
                    down=None if item.get("down") is None else float(item["down"]),
                    lines=tuple(PriceLine.from_dict(line) for line in item.get("lines", [])),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return found


def document(found: list[Period]) -> dict[str, Any]:
    return {"periods": [{"up": p.up, "down": p.down, "lines": [line.as_dict() for line in p.lines]} for p in found]}


def _write(stack: str, found: list[Period]) -> None:
    path = _path(stack)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(FILE + ".partial")
    partial.write_text(json.dumps(document(found), indent=1), encoding="utf-8")
    partial.replace(path)


def record_up(stack: str, lines: list[PriceLine], now: float | None = None) -> None:
    """The lab is up with these resources from now. An `up` that changed nothing priced continues the open
    period; one that changed the resources (more workers, on-demand instead of spot) starts a new one."""
    now = time.time() if now is None else now
    found = periods(stack)
    if found and found[-1].down is None:
        if list(found[-1].lines) == list(lines):
            return
        found[-1] = Period(found[-1].up, now, found[-1].lines)
    found.append(Period(now, None, tuple(lines)))
    _write(stack, found)


def record_down(stack: str, now: float | None = None) -> None:
    found = periods(stack)
    if found and found[-1].down is None:
        found[-1] = Period(found[-1].up, time.time() if now is None else now, found[-1].lines)
        _write(stack, found)


def record_stop(stack: str, at: float, keep: Callable[[PriceLine], bool]) -> bool:
    """Part of the lab stopped at `at` (the budget guard stopped the workers): the open period ends there and the
    resources `keep` names go on in a new one. False when no period is open or the open one began after `at`."""
    found = periods(stack)
    if not found or found[-1].down is not None or found[-1].up > at:
        return False
    open_period = found[-1]
    found[-1] = Period(open_period.up, at, open_period.lines)
    kept = tuple(line for line in open_period.lines if keep(line))
    if kept:
        found.append(Period(at, None, kept))
    _write(stack, found)
    return True


def current(stack: str) -> Period | None:
    found = periods(stack)
    return found[-1] if found and found[-1].down is None else None
