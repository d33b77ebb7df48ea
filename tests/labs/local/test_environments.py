"""Experiments' environments on the local lab: a notebook whose folder holds a requirements.txt runs in its own venv
($LAB_HOME/envs/<hash>, made with uv), its runs tagged lab.env; a second sweep finds the environment and does not
install it again; a requirement uv cannot resolve stops the sweep before its first trial with uv's reason, in one line.
The environment is layered on the lab's kernel: a notebook importing what the lab's kernel has (pandas) and its
requirements.txt does not name runs; one importing a module nobody has stops before any run, in one line naming it and
the requirements.txt. These reuse the first test's environment (the same requirements.txt): no install of their own.

uv's cache is kept between test runs (UV_CACHE_DIR under the temp folder), so only a first run downloads.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import pytest

from tests.envs import probe
from tests.labs.local.conftest import study_of

# The tests that need *a* lab share one for the module (tests/labs/local/conftest.py: `shared_lab`).
pytestmark = pytest.mark.shared_lab


@pytest.fixture(autouse=True)
def uv_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UV_CACHE_DIR", str(Path(tempfile.gettempdir()) / "lab-test-uv-cache"))


def dispatch(lab, notebook: Path, study: str, out: Path):
    return lab(
        "dispatch",
        str(notebook),
        "--space",
        str(probe.space(notebook.parent)),
        "--trials",
        "2",
        "--parallel",
        "2",
        "--study",
        study,
        "--local",
        "--json",
        "--output",
        str(out / "{study}/{trial}-{run_id}.ipynb"),
        timeout=600,
    )


def test_a_sweep_runs_in_its_environment_which_a_second_sweep_finds(lab, lab_up, state, isolated, tmp_path):
    notebook = probe.notebook(tmp_path / "exp")
    ran = dispatch(lab, notebook, "in-env", tmp_path / "out")
    assert ran.code == 0, ran.err + ran.out
    trials = json.loads(ran.out)["trials"]
    assert len(trials) == 2 and all(t["state"] == "COMPLETE" for t in trials), trials

    [made] = list((isolated / ".lab" / "envs").glob("*/lab-env.json"))
    digest = made.parent.name
    client = mlflow.MlflowClient(lab_up)
    for trial in study_of(state, "in-env").trials:
        tags = client.get_run(trial.user_attrs["mlflow_run_id"]).data.tags
        assert tags["lab.env"] == digest
        assert tags["termcolor"] == "2.4.0"  # the package the lab's own venv does not have
        assert tags["env_python"] == str(made.parent / "venv" / "bin" / "python")

    first = json.loads(made.read_text())["made"]
    ran = dispatch(lab, notebook, "in-env-again", tmp_path / "out")
    assert ran.code == 0, ran.err
    assert json.loads(made.read_text())["made"] == first  # found, not installed again
    for trial in study_of(state, "in-env-again").trials:
        assert client.get_run(trial.user_attrs["mlflow_run_id"]).data.tags["lab.env"] == digest


def test_a_requirement_uv_cannot_resolve_stops_the_sweep_before_its_first_trial(lab, lab_up, state, tmp_path):
    notebook = probe.notebook(tmp_path / "bad", requirements="nosuchpkg-lab-env-test==1.0\n")
    ran = dispatch(lab, notebook, "bad-env", tmp_path / "out")
    assert ran.code == 1, ran.out
    assert ran.err.strip().splitlines() == [ran.err.strip()]  # one line
    assert "nosuchpkg-lab-env-test" in ran.err and "not found in the package registry" in ran.err
    assert "requirements.txt" in ran.err
    import optuna

    storage = f"sqlite:///{state / 'tracker' / 'optuna.db'}"
    if "bad-env" in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
        assert not study_of(state, "bad-env").trials, "a trial started although the environment could not be made"


def no_trials_nor_runs(state: Path, tracking: str, study: str) -> None:
    import optuna

    storage = f"sqlite:///{state / 'tracker' / 'optuna.db'}"
    if study in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
        assert not study_of(state, study).trials, "a trial was asked for although the notebook cannot run"
    client = mlflow.MlflowClient(tracking)
    experiment = client.get_experiment_by_name(study)
    if experiment is not None:
        assert not client.search_runs([experiment.experiment_id]), "a run was made although the notebook cannot run"


def test_what_the_labs_kernel_has_stays_importable_in_an_environment(lab, lab_up, state, tmp_path):
    pytest.importorskip("pandas")  # the lab's kernel (the Python the local lab runs) has it
    notebook = probe.notebook(tmp_path / "layered", imports="import pandas\n")
    assert "pandas" not in (notebook.parent / "requirements.txt").read_text()
    ran = dispatch(lab, notebook, "layered", tmp_path / "out")
    assert ran.code == 0, ran.err + ran.out
    trials = json.loads(ran.out)["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE"], trials
    client = mlflow.MlflowClient(lab_up)
    for trial in study_of(state, "layered").trials:
        assert client.get_run(trial.user_attrs["mlflow_run_id"]).data.tags["termcolor"] == "2.4.0"  # and its own


def test_a_module_nobody_has_stops_the_sweep_before_any_run(lab, lab_up, state, tmp_path):
    notebook = probe.notebook(tmp_path / "missing", imports="import nosuchmodule_lab_test\n")
    ran = dispatch(lab, notebook, "missing-module", tmp_path / "out")
    assert ran.code == 1, ran.out
    assert ran.err.strip().splitlines() == [ran.err.strip()]  # one line
    assert "the notebook imports 'nosuchmodule_lab_test'" in ran.err, ran.err
    assert f"to {notebook.parent / 'requirements.txt'}" in ran.err, ran.err
    no_trials_nor_runs(state, lab_up, "missing-module")
