"""Detached sweeps keep their provenance: the bundle `lab dispatch --detach` hands over carries the notebook's git
commit, its path in the repository, whether the tree was dirty and a hash of the difference, and the runs of the
sweep made from that bundle are tagged as a terminal sweep's of the same checkout are (the user's notebook, not the
tracker's copy). Real git in a temporary checkout; no lab, no hosts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT
from toolkit.sweeps import dispatch as engine
from toolkit.sweeps import service
from toolkit.sweeps import space as spaces
from toolkit.sweeps.place import SweepPlace

PROBE = ROOT / "tests" / "data" / "notebooks" / "probe.ipynb"
SPACE = "objective: {metric: val_loss, direction: minimize}\nparams:\n  x: {type: float, low: 0.0, high: 1.0}\n"
PROVENANCE_TAGS = ("lab.notebook", "lab.notebook_sha256", "mlflow.source.git.commit", "lab.git.path", "lab.git.dirty")


def git(folder: Path, *argv: str) -> str:
    ran = subprocess.run(
        ["git", "-c", "user.name=Lab Test", "-c", "user.email=lab@example.invalid", "-C", str(folder), *argv],
        capture_output=True,
        text=True,
        check=True,
    )
    return ran.stdout.strip()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A git repository with the probe notebook in experiments/probe/ (and a module beside it), committed."""
    repo = tmp_path / "repo"
    folder = repo / "experiments" / "probe"
    folder.mkdir(parents=True)
    (folder / "probe.ipynb").write_bytes(PROBE.read_bytes())
    (folder / "helper.py").write_text("OFFSET = 0.3\n")
    (folder / "space.yml").write_text(SPACE)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "the experiment")
    return folder / "probe.ipynb"


def handed_over(notebook: Path, root: Path) -> tuple[Path, dict]:
    """What the tracker holds of a detached sweep of `notebook`: the received folder and its sweep.json."""
    doc = {"study": "prov", "notebook": notebook.name, "trials": 1, "timeout": None, "place": {"kind": "local"}}
    data = service.pack(notebook, notebook.parent / "space.yml", doc)
    folder = service.receive(root, "prov", data)
    return folder, json.loads((folder / "sweep.json").read_text())


def test_a_bundle_from_a_git_checkout_carries_commit_path_and_whether_the_tree_was_dirty(checkout, tmp_path):
    repo = checkout.parents[2]
    _, doc = handed_over(checkout, tmp_path / "clean")
    commit = git(repo, "rev-parse", "HEAD")
    assert doc["provenance"] == {
        "notebook": str(checkout.resolve()),
        "commit": commit,
        "path": "experiments/probe/probe.ipynb",
        "dirty": False,
        "diff_sha256": None,
    }

    (checkout.parent / "helper.py").write_text("OFFSET = 0.4\n")  # a change not committed
    _, dirty = handed_over(checkout, tmp_path / "dirty")
    _, again = handed_over(checkout, tmp_path / "again")
    (checkout.parent / "helper.py").write_text("OFFSET = 0.5\n")
    _, other = handed_over(checkout, tmp_path / "other")
    assert dirty["provenance"]["commit"] == commit and dirty["provenance"]["dirty"] is True
    digest = dirty["provenance"]["diff_sha256"]
    assert len(digest) == 64 and again["provenance"]["diff_sha256"] == digest  # the same difference, the same hash
    assert other["provenance"]["diff_sha256"] != digest

    (repo / "notes.txt").write_text("untracked\n")  # an untracked file makes the tree dirty too
    git(repo, "checkout", "-q", "--", ".")
    _, untracked = handed_over(checkout, tmp_path / "untracked")
    assert untracked["provenance"]["dirty"] is True and untracked["provenance"]["diff_sha256"] not in (None, digest)


def test_a_bundle_from_outside_git_says_only_which_notebook(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    notebook = folder / "probe.ipynb"
    notebook.write_bytes(PROBE.read_bytes())
    (folder / "space.yml").write_text(SPACE)
    _, doc = handed_over(notebook, tmp_path / "root")
    assert doc["provenance"] == {
        "notebook": str(notebook.resolve()),
        "commit": None,
        "path": None,
        "dirty": None,
        "diff_sha256": None,
    }


class Recorder:
    """What `Sweep._start_run` asks of MLflow's client, recorded (MlflowClient.create_run(experiment_id, tags=...)
    and log_batch(run_id, params=...), mlflow/tracking/client.py), each tag checked by MLflow's own validator
    (mlflow.utils.validation._validate_tag: key names, value length), as the tracker checks it. A real tracker
    records these runs in tests/labs/local/test_detached.py; here a run is not worth MLflow's DB set-up (seconds)."""

    def __init__(self) -> None:
        self.tags: dict[str, dict[str, str]] = {}

    def create_run(self, experiment_id: str, tags: dict[str, str]) -> SimpleNamespace:
        from mlflow.utils.validation import _validate_tag

        for key, value in tags.items():
            _validate_tag(key, value)
        run_id = f"run{len(self.tags)}"
        self.tags[run_id] = dict(tags)
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id))

    def log_batch(self, run_id: str, params: list) -> None:
        assert run_id in self.tags


@pytest.mark.parametrize("dirty", [False, True])
def test_a_detached_sweeps_runs_are_tagged_as_a_terminal_sweeps(checkout, tmp_path, dirty):
    if dirty:
        (checkout.parent / "helper.py").write_text("OFFSET = 0.4\n")
    place = SweepPlace([], "http://127.0.0.1:1", tmp_path / "optuna.db")
    terminal = engine.SweepSpec(
        notebook=checkout.resolve(),
        space=spaces.load(checkout.parent / "space.yml"),
        study="prov",
        trials=1,
        timeout=None,
        output_pattern=str(tmp_path / "out" / "{trial}.ipynb"),
        tracking_uri=place.tracking_uri,
        storage_path=place.storage_path,
    )
    folder, doc = handed_over(checkout, tmp_path / "root")
    detached = service.sweep_spec(folder, doc, place)
    client = Recorder()
    tags = []
    for spec in (terminal, detached):
        sweep = engine.Sweep(spec, [])
        sweep.client, sweep.experiment_id = client, "1"
        run_id = sweep._start_run(0, engine.TrialResult(number=0, params={}, slot="slot-0"), {"x": 0.5})
        tags.append(client.tags[run_id])
    from_terminal, from_bundle = tags
    same = ("lab.notebook", "mlflow.source.git.commit")
    assert {k: from_bundle.get(k) for k in same} == {k: from_terminal.get(k) for k in same}
    assert from_terminal["lab.notebook"] == str(checkout.resolve())  # the user's notebook, not the tracker's copy
    assert from_terminal["mlflow.source.git.commit"] == git(checkout.parent, "rev-parse", "HEAD")
    assert from_terminal["lab.git.path"] == "experiments/probe/probe.ipynb"
    assert from_terminal["lab.git.dirty"] == str(dirty).lower()
    assert ("lab.git.diff_sha256" in from_terminal) is dirty
    keys = PROVENANCE_TAGS + (("lab.git.diff_sha256",) if dirty else ())
    assert {k: from_bundle.get(k) for k in keys} == {k: from_terminal[k] for k in keys}
