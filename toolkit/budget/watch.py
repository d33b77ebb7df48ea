"""What a sweep run in a terminal (`lab dispatch --no-detach`) learns of the budget guard while it runs: the 80%
warning, shown in its live view as `lab sweep watch` shows it, and whether the guard stopped the lab.

Where the guard keeps its records decides how they are read (`Lab.budget_record`): the local guard writes this
machine's (the warning file `<stack folder>/sweeps/budget.json`, the ledger's `fired` record); the tracker's
guard (ssh, gcp) keeps the budget `lab up` handed it, with its `fired` record, in the tracker's
/var/lib/lab/guard/budget.json (root's), read over the lab's SSH access at most every `POLL_S` seconds, on a
thread of its own.

When the tracker's guard has fired, the terminal's sweep stops itself as Ctrl-C stops it (running trials
interrupted, their parameters queued: the same dispatch resumes them after `lab up --budget`). The local guard
needs no such reading: it runs `lab down`, which stops a terminal's sweep as Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from toolkit.budget import ledger
from toolkit.budget.spend import OK, STOP, Ledger, Limits, decide
from toolkit.config import paths
from toolkit.cost import uptime
from toolkit.errors import LabError

POLL_S = 30.0  # the guard itself looks every 30 s; a terminal's sweep learns of it at most this much later
EVERY_ENV = "LAB_BUDGET_GUARD_EVERY_S"  # tests look more often (the local guard's interval too)


@dataclass(frozen=True)
class News:
    """The guard as a sweep sees it: its line (None while the budget is fine), its state (ok, warn, stop), and
    what it did when it stopped the lab (None until then)."""

    line: str | None = None
    state: str = OK
    fired: dict[str, Any] | None = None

    @property
    def reason(self) -> str:
        return str((self.fired or {}).get("reason") or "")


def from_record(record: dict[str, Any], mine: Ledger, now: float | None = None) -> News:
    """The tracker's budget record read as the guard reads it: its verdict now on the budget it was handed (the
    same arithmetic), and its `fired` record unless a later `lab up` of this machine outdated it."""
    now = time.time() if now is None else now
    fired = ledger.fired_of(record, mine)
    if fired is not None:
        return News(f"the budget guard stopped the lab: {fired.get('reason', '?')}", STOP, fired)
    raw_limits = record.get("limits")
    if not isinstance(raw_limits, dict):
        return News()
    handed = Ledger.from_dict(record.get("ledger") or {})
    found = decide(Limits(**raw_limits), handed, uptime.parse(record), now)
    return News(None if found.state == OK else found.line(), found.state)


def from_files(stack: str) -> News:
    """The local guard's records: the warning it publishes for sweeps, and the ledger's `fired` record."""
    from toolkit.budget import guard
    from toolkit.sweeps import service

    fired = ledger.read(ledger.path_of(stack)).fired
    if fired:
        return News(f"the budget guard stopped the lab: {fired.get('reason', '?')}", STOP, fired)
    warning: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        warning = json.loads((paths.stack_home(stack) / service.SWEEPS / guard.WARNING_FILE).read_text())
    if not isinstance(warning, dict) or not warning.get("line"):
        return News()
    return News(str(warning["line"]), str(warning.get("state") or OK))


def news(lab: Any) -> News:
    """What the lab's guard says now (a LabError when the tracker cannot be asked)."""
    record = lab.budget_record()
    if record is None:
        return from_files(lab.stack)
    return from_record(record, ledger.read(ledger.path_of(lab.stack)))


def merged(state: dict[str, Any], found: News | None) -> dict[str, Any]:
    """A sweep's state (`toolkit.sweeps.service.snapshot`) with the guard's line, as `read_state` merges it."""
    if found is not None and found.line:
        return {**state, "budget": found.line}
    return state


class Watch:
    """Reads the guard's news every `every` seconds on a thread (the sweep's slots never wait for it); says a new
    warning once; calls `on_fired` once when the guard has stopped the lab."""

    def __init__(self, read: Callable[[], News], say: Callable[[str], None], every: float | None = None) -> None:
        self.read, self.say = read, say
        self.every = every if every is not None else min(float(os.environ.get(EVERY_ENV) or POLL_S), POLL_S)
        self.latest: News | None = None
        self.fired: dict[str, Any] | None = None
        self.done = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, on_fired: Callable[[News], None]) -> Watch:
        def loop() -> None:
            said = ""
            while not self.done.is_set():
                found = self.look()
                if found is not None and found.state != OK and found.line and found.line != said and not found.fired:
                    said = found.line
                    self.say(found.line)  # "budget warning: ..." (Verdict.line)
                if found is not None and found.fired:
                    self.fired = found.fired
                    on_fired(found)
                    return
                self.done.wait(self.every)

        self.thread = threading.Thread(target=loop, name="budget-watch", daemon=True)
        self.thread.start()
        return self

    def look(self) -> News | None:
        """One reading; None (the last reading kept) when the guard's records cannot be read now."""
        try:
            self.latest = self.read()
        except LabError:
            return None
        return self.latest

    def stop(self) -> None:
        self.done.set()
