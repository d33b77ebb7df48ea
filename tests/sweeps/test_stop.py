"""A stop is a barrier: no trial starts after it. Real processes holding real study locks (`lab down` and the local
budget guard stop them), and the dispatcher's own loop on the real Optuna storage (SQLite)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.sweeps.test_resume import QUICKSTART, sweep_of
from toolkit.sweeps import dispatch as engine
from toolkit.sweeps import slots
from toolkit.sweeps import space as spaces

optuna = pytest.importorskip("optuna")

HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from toolkit.errors import LabError
    from toolkit.sweeps import dispatch
    folder, study = Path(sys.argv[1]), sys.argv[2]
    with dispatch.study_lock(folder / "optuna.db", study):
        (folder / f"{study}.ready").write_text("")
        try:
            time.sleep(60)
        except KeyboardInterrupt:  # a sweep recording its trials takes a moment
            (folder / f"{study}.stopped").write_text(repr(time.time()))
            time.sleep(1.5)
    """
)


def test_down_stops_every_sweep_before_waiting_for_any(tmp_path):
    """Two sweeps: the second is told to stop while the first still records its trials, not once it has."""
    holders = [
        subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), study], cwd=Path(__file__).parents[2])
        for study in ("first", "second")
    ]
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"{s}.ready").exists() for s in ("first", "second")):
            assert time.monotonic() < deadline, "the sweeps did not take their locks"
            time.sleep(0.1)
        stopped = engine.interrupt_running(tmp_path, lambda _: None, timeout_s=30)
        ended = time.time()
        assert sorted(stopped) == ["first", "second"]
        told = [float((tmp_path / f"{s}.stopped").read_text()) for s in ("first", "second")]
        assert max(told) - min(told) < 1.0, "a sweep went on handing out trials while another one stopped"
        assert ended - max(told) < 3.0
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()


def test_a_trial_asked_for_before_the_stop_does_not_start_after_it(tmp_path):
    """The stop comes between the ask and the start: the slot never runs it; it is interrupted and queued."""

    class Slot:
        name = "slot-0"
        usd_per_hour = None

        def __init__(self) -> None:
            self.jobs: list[slots.Job] = []

        def run(self, job: slots.Job, cancel: threading.Event) -> slots.Outcome:
            self.jobs.append(job)
            return slots.Outcome("ok", 0.0)

    class Runs:
        """What the sweep asks of the tracker here (the real MLflow server is the lab tests'): a run's id."""

        def create_run(self, experiment_id, tags):
            return SimpleNamespace(info=SimpleNamespace(run_id="r1"))

        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    sweep = sweep_of(tmp_path, spaces.load(QUICKSTART / "space.yml"), "stopped", 4)
    sweep.client = Runs()
    slot = Slot()
    trial, result = sweep._next(slot)
    sweep.cancel.set()  # `lab sweep stop`, the budget guard, Ctrl-C
    sweep._run_trial(slot, trial, result)
    sweep._drain()
    assert slot.jobs == [], "a trial started after the stop"
    assert result.state == "INTERRUPTED"
    assert sweep._next(slot) is None, "nothing is handed out after the stop"
    states = [t.state.name for t in sweep.study.trials]
    assert states == ["FAIL", "WAITING"], "its parameters are queued for the dispatch that resumes the study"
