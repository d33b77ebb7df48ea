"""A study continues across dispatches: the dispatcher's asks (`Sweep._next`) with a fresh sampler per dispatch, as
each `lab dispatch` makes one, on the real Optuna storage (SQLite). No lab: the trials are told an objective here."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from toolkit.sweeps import dispatch as engine
from toolkit.sweeps import space as spaces

optuna = pytest.importorskip("optuna")

QUICKSTART = Path(__file__).resolve().parents[2] / "experiments" / "quickstart"


def sweep_of(tmp_path: Path, space: spaces.Space, study: str, trials: int) -> engine.Sweep:
    """One dispatch of `trials` trials in all, its study opened as `Sweep.open` opens it (minus the tracker)."""
    spec = engine.SweepSpec(
        notebook=QUICKSTART / "quickstart.ipynb",
        space=space,
        study=study,
        trials=trials,
        timeout=None,
        output_pattern=str(tmp_path / "out/{trial}.ipynb"),
        tracking_uri="http://127.0.0.1:1",
        storage_path=tmp_path / "optuna.db",
    )
    sweep = engine.Sweep(spec, [])
    sweep.study = optuna.create_study(
        study_name=study,
        storage=f"sqlite:///{spec.storage_path}",
        direction=space.direction,
        sampler=space.make_sampler(),
        load_if_exists=True,
    )
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in sweep.study.trials)
    sweep.progress = engine.Progress(planned=max(trials - complete, 0), already=complete)
    return sweep


def dispatch(tmp_path: Path, space: spaces.Space, study: str, trials: int) -> engine.Sweep:
    """Ask and tell until the dispatch has handed out its trials (one slot; the objective is the parameters')."""
    sweep = sweep_of(tmp_path, space, study, trials)
    slot = SimpleNamespace(name="slot-0")
    while (picked := sweep._next(slot)) is not None:
        trial, _ = picked
        sweep.study.tell(trial, objective(trial.params))
    return sweep


def objective(params: dict[str, Any]) -> float:
    return sum(hash(str(v)) % 1000 / 1000 for v in params.values())


def completed(sweep: engine.Sweep) -> list[dict[str, Any]]:
    return [t.params for t in sweep.study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def test_a_resumed_quickstart_continues_its_study(tmp_path):
    """8 trials, then `--trials 12`: 12 distinct parameter sets, each trial's what one dispatch of 12 gives it."""
    quickstart = spaces.load(QUICKSTART / "space.yml")
    dispatch(tmp_path, quickstart, "resumed", 8)
    resumed = completed(dispatch(tmp_path, quickstart, "resumed", 12))
    assert len(resumed) == 12
    assert len({tuple(sorted(p.items())) for p in resumed}) == 12, "a resumed sweep repeated a trial"
    at_once = completed(dispatch(tmp_path, quickstart, "at-once", 12))
    assert resumed[:10] == at_once[:10], "trial N's parameters depend on N, not on how many dispatches reached it"


def test_a_finite_space_stops_once_it_is_exhausted(tmp_path):
    """2 x 3 parameter sets: a study asked for 10 trials runs 6 distinct ones and says why it stopped."""
    path = tmp_path / "small.yml"
    path.write_text(
        "objective: {metric: val_loss, direction: minimize}\n"
        "params:\n  optimizer: {type: categorical, choices: [sgd, adam]}\n"
        "  width: {type: int, low: 16, high: 48, step: 16}\n"
        "sampler: {name: tpe, seed: 42}\n"
    )
    small = spaces.load(path)
    first = dispatch(tmp_path, small, "small", 4)
    assert not first.exhausted
    sweep = dispatch(tmp_path, small, "small", 10)
    sets = completed(sweep)
    assert len(sets) == 6 and len({tuple(sorted(p.items())) for p in sets}) == 6
    said = "the search space (small.yml) holds 6 parameter sets and study 'small' has tried them all"
    assert sweep.exhausted == said + ": no more trials to run"
    assert engine.summary(sweep, 0.0)["exhausted"] == sweep.exhausted
    again = dispatch(tmp_path, small, "small", 12)
    assert again.progress.results == [] and again.exhausted, "a study that has tried all stops before asking"
