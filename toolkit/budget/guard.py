"""The budget guard: every `EVERY_S` seconds it reads the budget (`toolkit.budget.ledger`); from 80% it warns (its log,
each running sweep's dispatch.log, and `lab sweep watch` through `<root>/sweeps/budget.json`); when the budget or the
hour limit is reached it stops the lab and says what it did and why.

Stopping, in order: the sweeps stop as `lab sweep stop` stops them, all at once (the stop is a barrier: no trial
starts after it; running trials interrupted, their parameters queued: the same dispatch resumes them), the runs the
stop ended get the MLflow tag `lab.budget_stop` (the reason), a verified snapshot is taken, the workers stop. Where
it runs decides how (a `Place`):

  LocalPlace    the local target: a process of the local lab (`lab up` starts it, `lab down` stops it); the lab's
                own `lab down` does the rest (sweeps interrupted, snapshot, services stopped)
  TrackerPlace  ssh and gcp: `lab-budget-guard.service` on the tracker (`toolkit.budget.tracker`)

`python -m toolkit.budget.guard local --stack S` runs the local one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolkit.budget import ledger
from toolkit.budget.spend import STOP, WARN, Verdict
from toolkit.errors import LabError

EVERY_S = 30.0  # fires within a minute of the budget being reached
TAG = "lab.budget_stop"
WARNING_FILE = "budget.json"  # in the sweeps' folder: what `lab sweep watch` shows
Say = Callable[[str], None]


class Place:
    """What the guard needs of where it runs."""

    sweeps_root: Path  # the folder holding sweeps/
    ledger_path: Path
    makes_sweeps_folder = False  # the local guard makes sweeps/ for a terminal's sweep (on the tracker it is not its)

    def verdict(self) -> Verdict:
        raise NotImplementedError

    def tracking_uri(self) -> str | None:
        raise NotImplementedError

    def foreground_studies(self) -> list[str]:
        """Studies swept by a `lab dispatch` in the foreground here (not a detached sweep)."""
        return []

    def running_sweeps(self) -> list[str]:
        """The detached sweeps running here."""
        return running_sweeps(self.sweeps_root)

    def note_sweeps(self, names: list[str], text: str) -> None:
        """A line in each of these sweeps' dispatch.log."""
        note_sweeps(self.sweeps_root, names, text)

    def publish(self, found: Verdict) -> None:
        """What `lab sweep watch` shows of the budget (`publish`)."""
        publish(self.sweeps_root, found, self.makes_sweeps_folder)

    def stop_sweeps(self, say: Any) -> str:
        """Stop every sweep here at once (none hands out a trial after this) and wait for their bookkeeping."""
        raise NotImplementedError

    def stop(self, say: Any) -> list[str]:
        """Once the sweeps are stopped: take a verified snapshot, stop the workers; what was done, one line each."""
        raise NotImplementedError


def say(text: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    print(f"{stamp} {text}", flush=True)


def running_sweeps(root: Path) -> list[str]:
    from toolkit.sweeps import service

    base = root / service.SWEEPS
    names = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
        if service.NAME.fullmatch(folder.name) and service.running(folder) is not None:
            names.append(folder.name)
    return names


def note_sweeps(root: Path, names: list[str], text: str) -> None:
    """A line in each running sweep's dispatch.log."""
    from toolkit.sweeps import service

    for name in names:
        service.log_line(service.folder_of(root, name), text)


def publish(root: Path, found: Verdict, make: bool = False) -> None:
    """What `lab sweep watch` and a terminal's `lab dispatch` show of the budget: the warning (or the stop), nothing
    when all is well. The sweeps' folder is made only when `make` (on the tracker it is the tracker user's)."""
    path = root / "sweeps" / WARNING_FILE
    if found.state == "ok":
        path.unlink(missing_ok=True)
        return
    if make:
        path.parent.mkdir(parents=True, exist_ok=True)
    if not path.parent.is_dir():  # no sweep yet
        return
    partial = path.with_name(WARNING_FILE + ".partial")
    partial.write_text(json.dumps({"state": found.state, "line": found.line(), "reason": found.reason}))
    partial.replace(path)


def tag_runs(tracking_uri: str | None, studies: list[str], reason: str, since: float) -> list[str]:
    """Tag the runs of these sweeps the stop ended (`lab.budget_stop`): those still running and those killed since
    `since` (the stop's start, seconds since the epoch); the runs tagged."""
    if not tracking_uri or not studies:
        return []
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    tagged = []
    killed = f"attributes.status = 'KILLED' and attributes.end_time >= {since * 1000:.0f}"
    ended = ("attributes.status = 'RUNNING'", killed)
    for study in studies:
        experiment = client.get_experiment_by_name(study)
        if experiment is None:
            continue
        for run in [run for query in ended for run in client.search_runs([experiment.experiment_id], query)]:
            client.set_tag(run.info.run_id, TAG, reason)
            tagged.append(run.info.run_id)
    return tagged


def check(place: Place, last: str) -> tuple[str, bool]:
    """One look at the budget: warn once per new warning, stop at the limit; (the warning shown, stopped)."""
    found = place.verdict()
    place.publish(found)
    if found.state == WARN and found.reason != last:
        say(found.line())  # "budget warning: ..." (Verdict.line)
        place.note_sweeps(place.running_sweeps(), found.line())
        return found.reason, False
    if found.state != STOP:
        return (found.reason if found.state == WARN else ""), False
    fire(place, found)
    return found.reason, True


def fire(place: Place, found: Verdict) -> list[str]:
    """Stop the lab for the budget: the sweeps first (the stop is a barrier: no trial starts after it), then their
    interrupted runs tagged, a snapshot, the workers; recorded in the ledger and the log."""
    why = f"the budget guard stopped the lab: {found.reason}"
    since = time.time()
    sweeps = place.running_sweeps()
    studies = sweeps + place.foreground_studies()
    place.note_sweeps(sweeps, f"{why}; running trials are interrupted and queued")
    say(why)
    did = [place.stop_sweeps(say)]
    try:
        tagged = tag_runs(place.tracking_uri(), studies, why, since)
        did.append(f"tagged {len(tagged)} interrupted runs {TAG}")
    except Exception as exc:  # the stop matters more than the tag
        did.append(f"could not tag the interrupted runs: {type(exc).__name__}: {exc}")
    did += place.stop(say)
    for line in did:
        say(f"budget guard: {line}")
    ledger.fired(place.ledger_path, ledger.read(place.ledger_path), found, did)
    return did


class LocalPlace(Place):
    makes_sweeps_folder = True

    def __init__(self, stack: str) -> None:
        from toolkit.labs import local

        self.lab = local.open_lab(stack)
        self.sweeps_root = self.lab.root
        self.ledger_path = ledger.path_of(stack)

    def verdict(self) -> Verdict:
        return ledger.verdict(self.lab.settings)

    def tracking_uri(self) -> str | None:
        from toolkit.labs import local

        record = local.running(self.lab, local.MLFLOW, say)
        return record.url if record else None

    def foreground_studies(self) -> list[str]:
        """The studies `lab dispatch` sweeps in the foreground on this machine (their locks in the tracker's folder)."""
        from toolkit.sweeps import dispatch

        found = []
        for lock in sorted(self.lab.tracker_dir.glob(f"{dispatch.LOCK_PREFIX}*.lock")):
            holder = dispatch.held(lock)
            if holder is not None and holder.get("study"):
                found.append(str(holder["study"]))
        return found

    def stop_sweeps(self, say: Any) -> str:
        """Every sweep on this machine, detached or in a terminal, holds its study's lock beside the tracker's DBs."""
        from toolkit.sweeps import dispatch

        stopped = dispatch.interrupt_running(self.lab.tracker_dir, say) if self.lab.tracker_dir.is_dir() else []
        return f"sweeps stopped as `lab sweep stop` does: {', '.join(stopped) or 'none'}"

    def stop(self, say: Any) -> list[str]:
        from toolkit.console import Ui
        from toolkit.labs.base import DownRequest

        class Said(Ui):
            def say(self, text: str) -> None:
                say(text)

            def show(self, text: str, **options: Any) -> None:
                say(text)

        from toolkit.labs import local
        from toolkit.tracker import services

        report = self.lab.down(DownRequest(), Said(yes=True))
        services.forget(self.lab.run_dir, local.GUARD)  # this process: it ends once the lab is down
        document = report.document
        return [
            f"verified snapshot: {document.get('backup')}",
            f"stopped: {', '.join(document.get('stopped') or [])}",
        ]


def loop(place: Place, every: float = EVERY_S) -> int:
    try:
        say(f"budget guard watching (every {every:g} s): {place.verdict().line()}")
    except LabError as exc:  # a malformed budget is said each look, never an exit (a restart loop)
        say(f"budget guard watching (every {every:g} s); warning: {exc.one_line()}")
    last = ""
    while True:
        try:
            last, stopped = check(place, last)
        except LabError as exc:
            say(f"warning: the budget could not be checked: {exc.one_line()}")
            stopped = False
        if stopped:
            return 0
        time.sleep(every)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit.budget.guard", description=__doc__.splitlines()[0])
    parser.add_argument("where", choices=("local", "tracker"))
    parser.add_argument("--stack", default="dev")
    parser.add_argument("--data", type=Path, help="tracker: the tracker's data folder (sweeps/)")
    parser.add_argument("--state", type=Path, help="tracker: the guard's own folder, root's alone (budget.json)")
    parser.add_argument("--user", help="tracker: the tracker's service user, who owns the data folder")
    parser.add_argument("--every", type=float, default=EVERY_S)
    parser.add_argument("--once", action="store_true", help="look once (a timer's run), then exit")
    args = parser.parse_args(argv)
    try:
        if args.where == "local":
            place: Place = LocalPlace(args.stack)
        else:
            from toolkit.budget import tracker

            place = tracker.TrackerPlace(args.data or tracker.DATA, args.state or tracker.STATE, args.user)
        if args.once:
            check(place, "")
            return 0
        return loop(place, args.every)
    except LabError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
