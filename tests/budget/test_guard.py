"""What the guard says before it stops anything: the 80% warning in each running sweep's dispatch.log (once per
warning) and in `lab sweep watch` (the sweep's state as the service reads it, and the table people see), gone once
the budget is fine again. A real sweep folder with its run lock held by this process, as the sweep service holds it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from toolkit.budget import guard
from toolkit.budget.spend import OK, STOP, WARN, Verdict
from toolkit.cli import sweep_view
from toolkit.sweeps import service


class Files(guard.Place):
    """A place whose budget the test sets; what it is asked to stop, in order."""

    def __init__(self, root: Path, found: Verdict) -> None:
        self.sweeps_root, self.ledger_path, self.found, self.stopped = root, root / "budget-ledger.json", found, 0
        self.asked: list[tuple[str, float]] = []

    def verdict(self) -> Verdict:
        return self.found

    def tracking_uri(self) -> str | None:
        return "http://127.0.0.1:1"

    def stop_sweeps(self, say) -> str:
        self.asked.append(("sweeps", time.time()))
        return "sweeps stopped as `lab sweep stop` does: s1"

    def stop(self, say) -> list[str]:
        self.asked.append(("the rest", time.time()))
        self.stopped += 1
        return ["stopped the workers"]


def verdict(state: str, spend: float) -> Verdict:
    reason = {OK: "", WARN: f"${spend:.2f} of the $10.00 budget spent ({spend / 10:.0%})"}.get(
        state, f"the budget of $10.00 is spent (${spend:.2f})"
    )
    return Verdict(state, spend, 10.0, 0.0, 1.0, None, reason)


def running_sweep(root: Path, name: str):
    folder = root / "sweeps" / name
    folder.mkdir(parents=True)
    service.write_state(folder, {"name": name, "status": "running", "slots": []})
    return folder, service.run_lock(folder)


def test_the_warning_reaches_the_sweeps_log_and_watch_once(tmp_path):
    folder, lock = running_sweep(tmp_path, "s1")
    place = Files(tmp_path, verdict(WARN, 8.5))
    with lock:
        last, stopped = guard.check(place, "")
        again, _ = guard.check(place, last)
    assert not stopped and again == last
    log = (folder / "dispatch.log").read_text()
    assert log.count("budget warning: $8.50 of $10.00 spent (85%)") == 1, log
    assert log.count("budget") == 1 and log.count("warning") == 1, "said once each"
    shown = service.read_state(folder)
    assert shown is not None and shown["budget"].startswith("budget warning: $8.50 of $10.00 spent (85%)")
    assert "(85%)" in str(sweep_view.table(shown).caption)

    place.found = verdict(OK, 1.0)  # `lab up --budget` gave the period more
    guard.check(place, last)
    assert "budget" not in (service.read_state(folder) or {})


@pytest.fixture(autouse=True)
def tags(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float]]:
    """What the guard tags (the tracker's side is tests/labs/local/test_budget_guard.py): when, and since when."""
    asked: list[tuple[str, float]] = []

    def tag_runs(tracking_uri, studies, reason, since=0.0) -> list[str]:
        asked.append(("tag", since))
        return []

    monkeypatch.setattr(guard, "tag_runs", tag_runs)
    return asked


def test_the_stop_is_a_barrier_the_sweeps_stop_first(tmp_path, tags):
    """No trial starts after the guard fired: every sweep is stopped before the guard spends seconds tagging runs;
    the runs tagged are those the stop ended (killed since it began), not only those still running."""
    place = Files(tmp_path, verdict(STOP, 10.2))
    place.asked = tags  # one list: the place's steps and the tagging, in the order they came
    before = time.time()
    guard.fire(place, place.found)
    assert [name for name, _ in tags] == ["sweeps", "tag", "the rest"]
    assert before <= tags[1][1] <= tags[0][1], "it tags the runs ended since the stop began"
    record = json.loads(place.ledger_path.read_text())["ledger"]["fired"]
    assert record["did"][0] == "sweeps stopped as `lab sweep stop` does: s1"


def test_at_the_budget_it_stops_once_and_records_why(tmp_path):
    folder, lock = running_sweep(tmp_path, "s1")
    place = Files(tmp_path, verdict(STOP, 10.2))
    with lock:
        _, stopped = guard.check(place, "")
    assert stopped and place.stopped == 1
    record = json.loads(place.ledger_path.read_text())["ledger"]["fired"]
    assert record["budget"] is True and record["reason"] == "the budget of $10.00 is spent ($10.20)"
    assert "stopped the workers" in record["did"]
    log = (folder / "dispatch.log").read_text()
    assert "the budget guard stopped the lab: the budget of $10.00 is spent ($10.20)" in log, log
    assert "REACHED" in (service.read_state(folder) or {}).get("budget", "")
