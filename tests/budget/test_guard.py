"""What the guard says before it stops anything: the 80% warning in each running sweep's dispatch.log (once per
warning) and in `lab sweep watch` (the sweep's state as the service reads it, and the table people see), gone once
the budget is fine again. A real sweep folder with its run lock held by this process, as the sweep service holds it."""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.budget import guard
from toolkit.budget.spend import OK, STOP, WARN, Verdict
from toolkit.cli import sweep_view
from toolkit.sweeps import service


class Files(guard.Place):
    """A place whose budget the test sets; nothing to stop."""

    def __init__(self, root: Path, found: Verdict) -> None:
        self.sweeps_root, self.ledger_path, self.found, self.stopped = root, root / "budget-ledger.json", found, 0

    def verdict(self) -> Verdict:
        return self.found

    def tracking_uri(self) -> str | None:
        return None

    def stop(self, say) -> list[str]:
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
