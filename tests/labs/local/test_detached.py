"""Detached sweeps on the local lab: `lab dispatch --detach` returns, the sweep goes on in a process of its own;
`lab sweep watch`, `logs`, `stop`, and the same dispatch resuming it. Real kernels, Optuna storage, MLflow server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nbformat
import pytest

from tests.conftest import ROOT
from tests.labs.local.conftest import probe_space, study_of

mlflow = pytest.importorskip("mlflow")
optuna = pytest.importorskip("optuna")

# The tests that need *a* lab share one for the module (tests/labs/local/conftest.py: `shared_lab`).
pytestmark = pytest.mark.shared_lab

PROBE = ROOT / "tests" / "data" / "notebooks" / "probe.ipynb"


def talking_notebook(folder: Path) -> Path:
    """A notebook that prints as it goes and imports a module that sits beside it (the sweep must take it along)."""
    folder.mkdir(parents=True)
    (folder / "helper.py").write_text("OFFSET = 0.3\n")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("x = 0.5\ntrial_number = 0\nseed = 0", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import mlflow\nfrom helper import OFFSET\n"
            "for step in range(3):\n    print(f'trial {trial_number} step {step}', flush=True)\n"
            "with mlflow.start_run():\n    mlflow.log_metric('val_loss', (x - OFFSET) ** 2)"
        ),
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / "talk.ipynb"
    nbformat.write(notebook, path)
    return path


def state_of(state: Path, name: str) -> dict:
    try:
        return json.loads((state / "sweeps" / name / "state.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def wait_running(state: Path, name: str, trials: int, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        now = state_of(state, name)
        if sum(1 for s in now.get("slots", []) if s.get("state") == "running") >= trials:
            return now
        assert now.get("status") not in ("finished", "failed", "stopped"), now
        assert time.monotonic() < deadline, f"{trials} trials never ran at once: {now}"
        time.sleep(0.3)


def committed(folder: Path) -> str:
    """`folder` made a git repository with everything in it committed; the commit."""
    import subprocess

    def git(*argv: str) -> str:
        ident = ["-c", "user.name=Lab Test", "-c", "user.email=lab@example.invalid"]
        ran = subprocess.run(["git", *ident, "-C", str(folder), *argv], capture_output=True, text=True, check=True)
        return ran.stdout

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "the experiment")
    return git("rev-parse", "HEAD").strip()


def test_a_detached_sweep_outlives_its_command(lab, lab_up, state, tmp_path):
    notebook = talking_notebook(tmp_path / "exp")
    commit = committed(notebook.parent)  # its runs name the user's checkout, as a terminal sweep's do
    space = probe_space(tmp_path)
    started = time.monotonic()
    ran = lab(
        "dispatch", str(notebook), "--space", str(space), "-n", "3", "-j", "2", "--study", "det", "--detach",
        "--local", "--json",
    )  # fmt: skip
    took = time.monotonic() - started
    assert ran.code == 0, ran.err
    handed = json.loads(ran.out)
    assert handed["sweep"] == "det" and handed["where"] == "on this machine"
    # It returned with the sweep still going (its trials take seconds each): it handed the sweep over, it did not
    # run it. The bound on its time is generous for a loaded machine (benchmarks/ are where its speed is measured).
    assert state_of(state, "det").get("status") not in ("finished", "failed", "stopped"), state_of(state, "det")
    assert took < 60, f"`lab dispatch --detach` took {took:.1f} s to return"
    (notebook.parent / "helper.py").write_text("raise ImportError('the sweep must run the copy it was handed')\n")

    watched = lab("sweep", "watch", "det", "--local", "--json", timeout=600)  # returns when the sweep ends
    assert watched.code == 0, watched.err
    final = json.loads(watched.out.strip().split("\n}\n")[-1] if "\n}\n" in watched.out else watched.out)
    assert final["status"] == "finished" and final["completed"] == 3, final

    listed = json.loads(lab("sweeps", "--local", "--json").out)  # the module's lab: other tests' sweeps may be there
    assert [(s["name"], s["status"], s["complete"]) for s in listed if s["name"] == "det"] == [("det", "finished", 3)]
    trial_log = lab("sweep", "logs", "det", "--trial", "0", "--local")
    assert trial_log.code == 0, trial_log.err
    assert "trial 0 step 2" in trial_log.out, trial_log.out
    sweep_log = lab("sweep", "logs", "det", "--local")
    assert "trial 0 complete" in sweep_log.out and "sweep det finished" in sweep_log.out, sweep_log.out

    client = mlflow.MlflowClient(lab_up)
    runs = client.search_runs([client.get_experiment_by_name("det").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3
    provenance = {"lab.notebook": str(notebook.resolve()), "mlflow.source.git.commit": commit}
    provenance |= {"lab.git.path": "talk.ipynb", "lab.git.dirty": "false"}  # edited only after it was handed over
    assert [{k: r.data.tags.get(k) for k in provenance} for r in runs] == [provenance] * 3
    assert all(r.data.metrics["val_loss"] == pytest.approx((r.data.params and float(r.data.params["x"]) - 0.3) ** 2)
               for r in runs)  # fmt: skip


def test_stop_interrupts_the_running_trials_and_the_same_dispatch_resumes(lab, lab_up, state, tmp_path):
    hold = tmp_path / "hold"
    hold.write_text("")
    space = probe_space(tmp_path, hold=str(hold))
    argv = [
        "dispatch",
        str(PROBE),
        "--space",
        str(space),
        "-n",
        "4",
        "-j",
        "2",
        "--study",
        "held",
        "--detach",
        "--local",
    ]
    # Handed over from where SIGINT is ignored (a shell's background job, cron): `lab sweep stop` still stops it.
    assert (ran := lab(*argv, sigint_ignored=True)).code == 0, ran.err
    wait_running(state, "held", 2)
    again = lab(*argv)
    assert again.code == 1 and "sweep 'held' is running" in again.err, again.err

    stopped = lab("sweep", "stop", "held", "--local", timeout=300)
    assert stopped.code == 0, stopped.err
    assert "2 running trials interrupted and queued" in stopped.out, stopped.out
    assert state_of(state, "held")["status"] == "stopped"
    study = study_of(state, "held")
    interrupted = [t for t in study.trials if t.state.name == "FAIL"]
    waiting = [t for t in study.trials if t.state.name == "WAITING"]
    assert len(interrupted) == 2 and all(t.user_attrs["lab_interrupted"] for t in interrupted)
    assert sorted(t.user_attrs["lab_resume_run_id"] for t in waiting) == sorted(
        t.user_attrs["mlflow_run_id"] for t in interrupted
    ), "each queued trial remembers the run it repeats"
    assert "interrupted" in lab("sweep", "logs", "held", "--local").out
    assert "nothing to do" in lab("sweep", "stop", "held", "--local").out

    hold.unlink()
    assert (ran := lab(*argv)).code == 0, ran.err
    assert lab("sweep", "watch", "held", "--local", "--json", timeout=600).code == 0
    study = study_of(state, "held")
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == 4
    client = mlflow.MlflowClient(lab_up)
    runs = client.search_runs([client.get_experiment_by_name("held").experiment_id])
    resumed = {r.data.tags.get("lab.resumes") for r in runs} - {None}
    assert resumed == {t.user_attrs["mlflow_run_id"] for t in interrupted}, "the retries got LAB_RESUME_RUN_ID"


@pytest.mark.own_lab  # `lab down` is what it tests
def test_down_stops_a_detached_sweep_first(lab, lab_up, state, tmp_path):
    hold = tmp_path / "hold"
    hold.write_text("")
    space = probe_space(tmp_path, hold=str(hold))
    argv = ["dispatch", str(PROBE), "--space", str(space), "-n", "2", "-j", "2", "--study", "late", "--detach"]
    assert (ran := lab(*argv, "--local", sigint_ignored=True)).code == 0, ran.err  # as from cron: still stopped
    wait_running(state, "late", 2)
    down = lab("down", "--local", "--json", timeout=300)
    assert down.code == 0, down.err
    assert json.loads(down.out)["sweeps_interrupted"] == ["late"]
    assert state_of(state, "late")["status"] == "stopped"
    assert len([t for t in study_of(state, "late").trials if t.state.name == "WAITING"]) == 2


def test_what_a_detached_sweep_refuses(lab, tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    notebook = folder / "nb.ipynb"
    notebook.write_bytes(PROBE.read_bytes())
    with (folder / "weights.bin").open("wb") as handle:  # sparse: 70 MB on paper, nothing on disk
        handle.truncate(70 * 2**20)
    space = probe_space(tmp_path)
    big = lab("dispatch", str(notebook), "--space", str(space), "--detach", "--local")
    assert big.code == 1
    assert "holds 70.0 MB, more than the 64 MB" in big.err and "weights.bin (70.0 MB)" in big.err, big.err
    assert len(big.err.strip().splitlines()) == 1, big.err
    named = lab("dispatch", str(PROBE), "--space", str(space), "--study", "a b", "--detach", "--local")
    assert named.code == 1 and "'a b' cannot name a sweep" in named.err, named.err
    nowhere = lab("sweep", "watch", "nothing-here", "--local")
    assert nowhere.code == 1 and "no sweep named 'nothing-here'" in nowhere.err, nowhere.err


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy's, from MLflow's own SQL store in this process
def test_one_dispatcher_per_study_on_any_machine(tmp_path):
    """The lease on the study, not a lock on this machine: a second dispatcher (another laptop, the tracker) of the
    same study is refused while the first one's lease lives, and takes it once the first let go or its lease ran out."""
    from toolkit.errors import LabError
    from toolkit.sweeps import dispatch as engine
    from toolkit.sweeps import space as spaces

    def sweep(folder: str) -> engine.Sweep:
        (tmp_path / folder).mkdir(exist_ok=True)
        spec = engine.SweepSpec(
            notebook=PROBE,
            space=spaces.load(probe_space(tmp_path)),
            study="shared",
            trials=1,
            timeout=None,
            output_pattern=str(tmp_path / "out" / "{trial}.ipynb"),
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            storage_path=tmp_path / "optuna.db",
        )
        return engine.Sweep(spec, [])

    first, second = sweep("laptop"), sweep("tracker")
    first.open()
    with pytest.raises(LabError, match=r"study 'shared' is being swept by another `lab dispatch` \(on .*, pid \d+\)"):
        second.open()
    first.close()
    second.open()  # let go: taken at once
    storage = second.study._storage
    lease = storage.get_study_user_attrs(second.study._study_id)[engine.LEASE_ATTR]
    second.closed.set()  # as if killed: its lease is no longer renewed ...
    storage.set_study_user_attr(second.study._study_id, engine.LEASE_ATTR, {**lease, "until": time.time() - 1})
    third = sweep("another")
    third.open()  # ... and once it ran out, another dispatcher takes the study over
    third.close()


def test_the_summary_starts_on_a_line_of_its_own(lab_up, tmp_path):
    """Where stdout and stderr are one pipe (`lab dispatch ... 2>&1 | tee`), the live table (stderr) ends its last
    line before the summary (stdout) begins."""
    import subprocess

    from tests.conftest import LAB

    space = probe_space(tmp_path)
    argv = [str(LAB), "dispatch", str(PROBE), "--space", str(space), "-n", "1", "--study", "lines", "--local"]
    argv += ["--output", str(tmp_path / "out" / "{trial}.ipynb")]
    merged = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, check=False)
    assert merged.returncode == 0, merged.stdout
    assert "\n1 completed, 0 failed this run" in merged.stdout, merged.stdout
    assert "┘1 completed" not in merged.stdout


@pytest.mark.parametrize("name", ["../evil", "/etc/evil", "bundle/../../evil", "elsewhere.txt", "bundle/link"])
def test_a_bundle_is_checked_before_anything_is_unpacked(tmp_path, name):
    """What the tracker receives is a tar from the network: a member outside bundle/, a path climbing out, or a
    link is refused and nothing is written (the tracker's Python may predate tarfile's own filters)."""
    import io
    import tarfile

    from toolkit.errors import LabError
    from toolkit.sweeps import service

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        if name.endswith("link"):
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(LabError, match="a sweep's bundle may not hold"):
        service.receive(tmp_path / "root", "victim", buffer.getvalue())
    assert not list((tmp_path / "root").rglob("evil")) and not (tmp_path / "etc").exists()
    assert not (tmp_path / "root" / "sweeps" / "victim").exists()
