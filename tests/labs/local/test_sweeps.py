"""`lab sweeps` and `lab sweep show` over a real Optuna storage in the tracker's folder."""

from __future__ import annotations

import json

import pytest

optuna = pytest.importorskip("optuna")


@pytest.fixture
def sweeps_db(state):
    (state / "tracker").mkdir(parents=True)
    storage = f"sqlite:///{state / 'tracker' / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    up = optuna.create_study(
        study_name="up", storage=storage, direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1)
    )
    up.optimize(lambda t: t.suggest_float("a", 0, 1) + (t.suggest_categorical("b", ["x", "y"]) == "y"), n_trials=6)
    down = optuna.create_study(study_name="down", storage=storage)
    down.enqueue_trial({"c": 2.0})
    trial = down.ask({"c": optuna.distributions.FloatDistribution(0, 4)})
    down.tell(trial, state=optuna.trial.TrialState.FAIL)
    return up


def test_sweeps_lists_each_study(lab, sweeps_db):
    ran = lab("sweeps", "--local", "--json")
    assert ran.code == 0, ran.err
    found = {s["name"]: s for s in json.loads(ran.out)}
    assert found["up"]["trials"] == 6 and found["up"]["complete"] == 6
    assert found["up"]["best"] == sweeps_db.best_value
    assert found["up"]["direction"] == "maximize"
    assert found["down"] == {**found["down"], "trials": 1, "complete": 0, "failed": 1, "best": None}
    assert found["up"]["last_activity"]
    table = lab("sweeps", "--local")
    assert "up" in table.out and "maximize" in table.out


def test_sweep_show_best_trials_and_plots(lab, sweeps_db, tmp_path):
    ran = lab("sweep", "show", "up", "--local", "--json", "--top", "3", "--plot-dir", str(tmp_path / "plots"))
    assert ran.code == 0, ran.err
    shown = json.loads(ran.out)
    values = [row["value"] for row in shown["best"]]
    assert values == sorted(values, reverse=True) and len(values) == 3
    assert values[0] == sweeps_db.best_value
    html, png = (tmp_path / "plots" / "parallel-coordinates.html"), (tmp_path / "plots" / "parallel-coordinates.png")
    assert shown["plots"] == [str(html), str(png)]
    assert "plotly" in html.read_text()[:200000].lower()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_show_unknown_and_empty(lab, sweeps_db):
    ran = lab("sweep", "show", "nope", "--local")
    assert ran.code == 1
    assert ran.err.strip() == "error: no sweep named 'nope'; known sweeps: up, down"
    ran = lab("sweep", "show", "down", "--local")
    assert ran.code == 1
    assert "has no completed trial to plot" in ran.err


def test_no_sweeps_yet(lab):
    ran = lab("sweeps", "--local")
    assert ran.code == 1
    assert "there are no sweeps yet" in ran.err
