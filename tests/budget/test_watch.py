"""What this machine learns of a budget guard that runs elsewhere, and what a terminal's sweep shows of it.

- The tracker's budget record (the document `lab up` hands the guard, `toolkit.budget.tracker.handed`, with the
  `fired` record `toolkit.budget.ledger.fired` writes) read as the guard reads it: its warning from 80%, its
  `fired` record, a stale record (from before this machine's last `lab up`) ignored.
- That record taken into this machine's files under LAB_HOME: the ledger says the guard fired, the workers'
  uptime ends when it stopped them (the tracker goes on), once only; `lab up` is then refused.
- The watch thread a terminal's sweep runs: says a new warning once, stops the sweep once the guard fired, and a
  tracker that cannot be asked is no stop.
- The local guard's warning file in the live table a terminal's `lab dispatch` draws.
"""

from __future__ import annotations

import threading
import time

import pytest

from toolkit.budget import guard, ledger, tracker, watch
from toolkit.budget.spend import OK, STOP, WARN, Ledger, Limits, Verdict, decide
from toolkit.cli import sweep_view
from toolkit.config import schema
from toolkit.cost import prices, uptime
from toolkit.errors import LabError

HOSTS = [prices.PriceLine("tracker", "tracker", 1, 1.0), prices.PriceLine("worker", "worker-1", 1, 9.0)]  # $10 / h
LIMITS = Limits(10.0, "up", None)


def handed(up: float, fired_at: float | None = None, hours_from: float | None = None) -> dict:
    """The tracker's budget record: what `lab up` at `up` handed, and the guard's `fired` record if it fired."""
    kept = Ledger(period_from=up, hours_from=up if hours_from is None else hours_from)
    record = tracker.handed(LIMITS, kept, [uptime.Period(up, None, tuple(HOSTS))])
    if fired_at is not None:
        found = decide(LIMITS, kept, [uptime.Period(up, None, tuple(HOSTS))], fired_at)
        record["ledger"]["fired"] = {"at": fired_at, "reason": found.reason, "budget": True, "did": [], "state": STOP}
    return record


def test_the_tracker_record_read_as_the_guard_reads_it():
    up = 1_000_000.0
    fine = watch.from_record(handed(up), Ledger(), now=up + 0.5 * 3600)  # $5 of $10
    assert fine.line is None and fine.fired is None
    near = watch.from_record(handed(up), Ledger(), now=up + 0.85 * 3600)
    assert near.state == WARN and "budget warning: $8.50 of $10.00 spent (85%)" in str(near.line)
    stopped = watch.from_record(handed(up, fired_at=up + 3600), Ledger(hours_from=up), now=up + 3700)
    assert stopped.fired is not None and stopped.reason == "the budget of $10.00 is spent ($10.00)"
    assert stopped.line == "the budget guard stopped the lab: the budget of $10.00 is spent ($10.00)"
    stale = watch.from_record(handed(up, fired_at=up + 3600), Ledger(hours_from=up + 7200), now=up + 7300)
    assert stale.fired is None, "a record older than this machine's last `lab up` (not handed over) is not a stop"


def test_the_fired_record_ends_the_workers_uptime_once(project):
    project(**{"lab:budgetUsd": 10})
    now = time.time()
    up, fired_at = now - 2 * 3600, now - 3600
    uptime.record_up("dev", HOSTS, now=up)
    ledger.write(ledger.path_of("dev"), Ledger(period_from=up, hours_from=up))
    record = handed(up, fired_at=fired_at)

    taken = ledger.take_fired("dev", record)
    assert taken is not None and taken["at"] == fired_at and taken["where"] == "tracker"
    periods = uptime.periods("dev")
    assert [(p.up, p.down) for p in periods] == [(up, fired_at), (fired_at, None)]
    assert [line.item for line in periods[-1].lines] == ["tracker"], "the tracker goes on; the worker stopped"
    assert ledger.take_fired("dev", record) == taken and len(uptime.periods("dev")) == 2, "taken once"

    limited = settings(**{"lab:budgetUsd": 10})
    found = ledger.verdict(limited, now=now)
    assert found.spend_usd == pytest.approx(10.0 + 1.0, abs=0.01), "the worker's $9/h stopped an hour ago"
    assert found.state == STOP
    assert "stopped the lab at" in ledger.describe_fired(taken) and "on the tracker" in ledger.describe_fired(taken)
    with pytest.raises(LabError, match=r"the budget guard stopped the lab \(the budget of \$10\.00 is spent"):
        ledger.before_up(limited, None, now=now)
    again = ledger.before_up(limited, 50.0, now=now)
    assert again.fired is None and again.override_usd == 50.0


def test_hours_stop_counting_when_the_guard_fired(project):
    project(**{"lab:maxHours": 1})
    now = time.time()
    up = now - 3 * 3600
    uptime.record_up("dev", HOSTS, now=up)
    ledger.write(ledger.path_of("dev"), Ledger(period_from=up, hours_from=up))
    ledger.take_fired("dev", handed(up, fired_at=up + 3600))
    assert ledger.verdict(settings(**{"lab:maxHours": 1}), now=now).hours == pytest.approx(1.0)


def test_the_watch_warns_once_and_stops_the_sweep_when_the_guard_fired():
    up = 1_000_000.0
    said: list[str] = []
    stopped = threading.Event()
    readings = iter(
        [
            LabError("cannot reach tracker"),  # a tracker that cannot be asked now: no stop, the next look counts
            watch.from_record(handed(up), Ledger(), now=up + 0.85 * 3600),
            watch.from_record(handed(up), Ledger(), now=up + 0.85 * 3600),
            watch.from_record(handed(up, fired_at=up + 3600), Ledger(), now=up + 3600),
        ]
    )

    def read() -> watch.News:
        found = next(readings)
        if isinstance(found, LabError):
            raise found
        return found

    looking = watch.Watch(read, said.append, every=0.01).start(lambda news: stopped.set())
    assert stopped.wait(5), "the guard's stop reached the sweep"
    looking.stop()
    assert said == ["budget warning: $8.50 of $10.00 spent (85%) since 1970-01-12 13:46 UTC, $1.50 left"]
    assert looking.fired is not None and "the budget of $10.00 is spent" in looking.fired["reason"]


def test_a_terminal_sweep_shows_the_local_guards_warning(project):
    project(**{"lab:budgetUsd": 10})
    root = ledger.path_of("dev").parent
    found = Verdict(WARN, 8.5, 10.0, 0.0, 0.5, None, "$8.50 of the $10.00 budget spent (85%)")
    guard.publish(root, found, make=True)  # the local guard makes the sweeps' folder a terminal's sweep has not
    news = watch.from_files("dev")
    assert news.state == WARN and news.line == found.line()
    state = watch.merged({"name": "s", "status": "running", "slots": []}, news)
    assert "(85%)" in str(sweep_view.table(state).caption)
    guard.publish(root, Verdict(OK, 1.0, 10.0, 0.0, 0.5, None, ""), make=True)
    assert watch.from_files("dev").line is None, "gone once the budget is fine again"


@pytest.fixture
def project(tmp_path, monkeypatch):
    def write(**keys: object) -> None:
        import json

        (tmp_path / "Pulumi.yaml").write_text("name: lab\nruntime: python\n")
        lines = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in {"lab:target": "local", **keys}.items())
        (tmp_path / "Pulumi.dev.yaml").write_text("config:\n" + lines)
        monkeypatch.setenv("LAB_PROJECT_DIR", str(tmp_path))

    return write


def settings(**keys: object) -> schema.Settings:
    resolved = schema.resolve({"lab:target": "local", **keys}, stack="dev")
    assert resolved.problems == [] and resolved.settings is not None, resolved.problems
    return resolved.settings
