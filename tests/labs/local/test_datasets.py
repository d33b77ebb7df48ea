"""Datasets on the local lab: `lab data push` into $LAB_HOME/datasets, a sweep whose space file names the dataset
reads identical bytes through toolkit.data.path (fetched to $LAB_HOME/data before the first trial), and a dataset
not in the store stops the sweep before its first trial with one line naming it."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow

from tests.data_sync import probe
from tests.labs.local.conftest import study_of


def dispatch(lab, tmp_path: Path, space: Path, study: str):
    return lab(
        "dispatch",
        str(probe.NOTEBOOK),
        "--space",
        str(space),
        "--trials",
        "2",
        "--parallel",
        "2",
        "--study",
        study,
        "--local",
        "--json",
        "--output",
        str(tmp_path / "out/{study}/{trial}-{run_id}.ipynb"),
        timeout=600,
    )


def test_a_sweep_reads_its_dataset_and_a_missing_one_stops_it(lab, lab_up, state, isolated, tmp_path):
    source = probe.make_dataset(tmp_path / "toy")
    pushed = lab("data", "push", str(source), "--name", "toy", "--local")
    assert pushed.code == 0, pushed.err

    ran = dispatch(lab, tmp_path, probe.space(tmp_path, "toy"), "reads")
    assert ran.code == 0, ran.err
    trials = json.loads(ran.out)["trials"]
    assert len(trials) == 2 and all(t["state"] == "COMPLETE" for t in trials), trials
    client = mlflow.MlflowClient(lab_up)
    for trial in study_of(state, "reads").trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["data_digest"] == probe.digest(source)
        version = run.data.tags["lab.data"].split("@", 1)[1]
        assert run.data.tags["data_folder"] == str(isolated / ".lab" / "data" / "toy" / version)

    ran = dispatch(lab, tmp_path, probe.space(tmp_path, "toy, ghost@v1"), "missing")
    assert ran.code == 1
    assert ran.err.strip().splitlines() == [ran.err.strip()]
    assert "dataset ghost is not in the store" in ran.err
    if _exists(state, "missing"):
        assert not study_of(state, "missing").trials, "a trial started although a dataset was missing"


def _exists(state: Path, name: str) -> bool:
    import optuna

    storage = f"sqlite:///{state / 'tracker' / 'optuna.db'}"
    return name in {s.study_name for s in optuna.get_all_study_summaries(storage)}
