"""The per-host preparation of a sweep (toolkit.sweeps.prepare) on the local lab: a real sweep, real kernels.

A step checks before any trial, prepares each host once before its first trial (the host's other slots wait for
it), and what it returns reaches the trials: variables in their kernels, the kernel they run with, tags on runs.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.labs.local.conftest import probe_space
from toolkit.errors import LabError
from toolkit.sweeps import dispatch as engine
from toolkit.sweeps import prepare, slots, space

# The tests that need *a* lab share one for the module (tests/labs/local/conftest.py: `shared_lab`).
pytestmark = pytest.mark.shared_lab

NOTEBOOK_CELLS = [
    ("x = 0.5\ntrial_number = 0\nseed = 0", ["parameters"]),
    (
        "import os\nimport mlflow\n"
        "with mlflow.start_run():\n"
        "    mlflow.set_tag('prepared_seen', os.environ.get('LAB_PREPARED', ''))\n"
        "    mlflow.set_tag('kernel_mark', os.environ.get('LAB_KERNEL_MARK', ''))\n"
        "    mlflow.log_metric('val_loss', (x - 0.3) ** 2)",
        [],
    ),
]


def notebook(folder: Path) -> Path:
    cells = [
        {"cell_type": "code", "metadata": {"tags": tags}, "source": source, "outputs": [], "execution_count": None}
        for source, tags in NOTEBOOK_CELLS
    ]
    doc = {
        "cells": cells,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path = folder / "prepared.ipynb"
    path.write_text(json.dumps(doc))
    return path


def kernelspec(root: Path, name: str) -> None:
    """A kernel of its own (as an experiment's environment gets): this Python through a wrapper, so it is started
    as a new process, not forked from the runner's warm state, with a variable that shows it was the one used."""
    root.mkdir(parents=True, exist_ok=True)
    wrapper = root / "python-wrapper"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    folder = root / "share" / "jupyter" / "kernels" / name
    folder.mkdir(parents=True)
    spec = {
        "argv": [str(wrapper), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": name,
        "language": "python",
        "env": {"LAB_KERNEL_MARK": name},
    }
    (folder / "kernel.json").write_text(json.dumps(spec))


@dataclass
class MarkStep:
    """Writes a file on the host through the host's commands, hands the trials a variable, a kernel, a tag."""

    marker: Path
    kernel: str | None = None
    fail_check: bool = False
    fail_host: bool = False
    name: str = "marker"
    hosts: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self) -> None:
        if self.fail_check:
            raise LabError("dataset 'nope' is not in the store", hint="push it with `lab data push`")

    def on_host(self, host: prepare.HostCommands) -> prepare.Prepared:
        with self.lock:
            self.hosts.append(host.name)
        if self.fail_host:
            raise LabError(f"{host.name}: cannot install requirement 'nosuchpkg==9'")
        ran = host.run([host.python, "-c", f"open({str(self.marker)!r}, 'a').write('x')"])
        assert ran.returncode == 0, ran.stderr
        return prepare.Prepared(env={"LAB_PREPARED": host.name}, kernel=self.kernel, tags={"lab.prepared": "yes"})


def spec_of(tmp_path: Path, tracking_uri: str, state: Path, study: str, step: MarkStep) -> engine.SweepSpec:
    return engine.SweepSpec(
        notebook=notebook(tmp_path),
        space=space.load(probe_space(tmp_path)),
        study=study,
        trials=4,
        timeout=None,
        output_pattern=str(tmp_path / "out/{trial}-{run_id}.ipynb"),
        tracking_uri=tracking_uri,
        storage_path=state / "tracker" / "optuna.db",
        steps=(step,),
    )


def runs_of(tracking_uri: str, sweep: engine.Sweep) -> list:
    import mlflow

    return mlflow.MlflowClient(tracking_uri).search_runs([sweep.experiment_id], max_results=50)


def test_a_host_is_prepared_once_and_its_trials_get_what_the_step_made(lab_up, state, tmp_path, monkeypatch):
    kernelspec(tmp_path / "kernels", "lab-env-test")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "kernels" / "share" / "jupyter"))
    step = MarkStep(marker=tmp_path / "marker", kernel="lab-env-test")
    sweep = engine.Sweep(
        spec_of(tmp_path, lab_up, state, "prepared", step), [slots.LocalSlot(name="a"), slots.LocalSlot(name="b")]
    )
    progress = sweep.run()
    sweep.close()
    assert [r.state for r in progress.results] == ["COMPLETE"] * 4, [r.error for r in progress.results]
    assert step.hosts == ["local"]  # two slots, one host: one preparation
    assert (tmp_path / "marker").read_text() == "x"  # run on the host through its commands
    runs = runs_of(lab_up, sweep)
    assert len(runs) == 4
    for run in runs:
        assert run.data.tags["lab.prepared"] == "yes"
        assert run.data.tags["prepared_seen"] == "local"
        assert run.data.tags["kernel_mark"] == "lab-env-test"  # the step's kernel, not the notebook's python3


def test_a_failing_check_stops_the_sweep_before_any_trial(lab_up, state, tmp_path):
    step = MarkStep(marker=tmp_path / "marker", fail_check=True)
    sweep = engine.Sweep(spec_of(tmp_path, lab_up, state, "unchecked", step), [slots.LocalSlot(name="a")])
    with pytest.raises(LabError, match="'nope' is not in the store"):
        sweep.open()
    sweep.close()
    assert step.hosts == []
    assert not (tmp_path / "marker").exists()


def test_a_host_that_cannot_be_prepared_fails_the_sweep_before_its_first_trial(lab_up, state, tmp_path):
    step = MarkStep(marker=tmp_path / "marker", fail_host=True)
    sweep = engine.Sweep(
        spec_of(tmp_path, lab_up, state, "unprepared", step), [slots.LocalSlot(name="a"), slots.LocalSlot(name="b")]
    )
    with pytest.raises(LabError, match="cannot install requirement 'nosuchpkg==9'"):
        sweep.run()
    sweep.close()
    assert runs_of(lab_up, sweep) == []  # no trial started
    assert step.hosts  # it was asked


def test_steps_come_from_the_registered_factories(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "STEP_FACTORIES", [f"{__name__}:factory_for_test", f"{__name__}:no_step"])
    searched = space.load(probe_space(tmp_path))
    made = prepare.steps_for(searched, tmp_path, place=None)  # type: ignore[arg-type]
    assert [step.name for step in made] == ["marker"]
    assert made[0].marker == tmp_path / "from-factory"


def factory_for_test(searched: space.Space, folder: Path, place: object) -> MarkStep:
    return MarkStep(marker=folder / "from-factory")


def no_step(searched: space.Space, folder: Path, place: object) -> None:
    return None
