"""`lab dispatch` on the local lab: real papermill kernels, the real Optuna storage, the real MLflow server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LAB, ROOT, sigint_default, sigint_ignore
from tests.labs.local.conftest import probe_space, study_of

mlflow = pytest.importorskip("mlflow")
optuna = pytest.importorskip("optuna")

# The tests that need *a* lab share one for the module (tests/labs/local/conftest.py: `shared_lab`).
pytestmark = pytest.mark.shared_lab

PROBE = ROOT / "tests" / "data" / "notebooks" / "probe.ipynb"
QUICKSTART = ROOT / "experiments" / "quickstart"


def dispatch(lab, tmp_path, *args):
    return lab(
        "dispatch",
        *args,
        "--local",
        "--json",
        "--output",
        str(tmp_path / "out/{study}/{trial}-{run_id}.ipynb"),
        timeout=600,
    )


def test_eight_trials_on_four_slots(lab, lab_up, state, tmp_path):
    ran = dispatch(
        lab,
        tmp_path,
        str(QUICKSTART / "quickstart.ipynb"),
        "--space",
        str(QUICKSTART / "space.yml"),
        "--trials",
        "8",
        "--parallel",
        "4",
        "--study",
        "quick",
    )
    assert ran.code == 0, ran.err
    summary = json.loads(ran.out)
    assert summary["completed"] == 8 and summary["failed"] == 0
    assert len({t["slot"] for t in summary["trials"]}) == 4, "all four slots were used"

    study = study_of(state, "quick")
    assert len(study.trials) == 8
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert summary["best"]["value"] == study.best_value

    client = mlflow.MlflowClient(lab_up)
    experiment = client.get_experiment_by_name("quick")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 8
    by_trial = {int(r.data.tags["lab.trial"]): r for r in runs}
    assert sorted(by_trial) == list(range(8))
    for number, run in by_trial.items():
        trial = study.trials[number]
        assert run.info.status == "FINISHED"
        assert run.data.metrics["val_loss"] == trial.value
        for split in ("train", "val"):
            for metric in ("loss", "top1", "top5"):
                history = client.get_metric_history(run.info.run_id, f"{split}_{metric}")
                assert [m.step for m in history] == [0, 1, 2], "one value per epoch"
        assert run.data.params["lr"] == str(trial.params["lr"])
        assert run.data.params["trial_number"] == str(number)
        assert run.data.params["epochs"] == "3"
        assert run.data.tags["lab.study"] == "quick"
        assert len(run.data.tags["lab.notebook_sha256"]) == 64
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
        assert f"{number}-{run.info.run_id}.ipynb" in artifacts
        assert (tmp_path / "out" / "quick" / f"{number}-{run.info.run_id}.ipynb").is_file()

    # The same study resumes: --trials counts the total.
    ran = dispatch(
        lab,
        tmp_path,
        str(QUICKSTART / "quickstart.ipynb"),
        "--space",
        str(QUICKSTART / "space.yml"),
        "--trials",
        "10",
        "--parallel",
        "2",
        "--study",
        "quick",
    )
    assert ran.code == 0, ran.err
    resumed = study_of(state, "quick")
    complete = [t for t in resumed.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 10 and len(json.loads(ran.out)["trials"]) == 2
    params = {tuple(sorted(t.params.items())) for t in complete}
    assert len(params) == 10, "the resumed trials continue the study: none repeats an earlier trial's parameters"


def test_failures_fail_their_trial_and_the_sweep_goes_on(lab, lab_up, state, tmp_path):
    ran = dispatch(
        lab,
        tmp_path,
        str(PROBE),
        "--space",
        str(probe_space(tmp_path, mode="raise_odd")),
        "--trials",
        "4",
        "--parallel",
        "2",
        "--study",
        "odd",
    )
    assert ran.code == 0, ran.err  # some trials completed
    summary = json.loads(ran.out)
    states = {t["number"]: t["state"] for t in summary["trials"]}
    assert states == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE", 3: "FAIL"}
    client = mlflow.MlflowClient(lab_up)
    for trial in summary["trials"]:
        run = client.get_run(trial["run_id"])
        if trial["state"] == "FAIL":
            assert run.info.status == "FAILED"
            assert f"ValueError: boom in trial {trial['number']}" in run.data.tags["lab.error"]
            assert "error.txt" in [a.path for a in client.list_artifacts(trial["run_id"])]
        else:
            assert run.data.tags["progress_bars"] == "false", "no MLflow download bars in a trial's output"
    study = study_of(state, "odd")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE", "FAIL"]

    # A sweep run in the terminal is read as a detached one is: its log, a failed trial's error, its status.
    logs = lab("sweep", "logs", "odd", "--local", "--trial", "1")
    assert logs.code == 0 and "ValueError: boom in trial 1" in logs.out, logs.err
    logs = lab("sweep", "logs", "odd", "--local")
    assert logs.code == 0 and "trial 1 fail" in logs.out and "sweep odd finished" in logs.out, logs.out
    listed = {s["name"]: s for s in json.loads(lab("sweeps", "--local", "--json").out)}
    assert listed["odd"]["status"] == "finished" and listed["odd"]["failed"] == 2, listed["odd"]


def test_missing_objective_names_the_metric(lab, lab_up, tmp_path):
    ran = dispatch(
        lab,
        tmp_path,
        str(PROBE),
        "--space",
        str(probe_space(tmp_path, mode="no_metric")),
        "--trials",
        "1",
        "--study",
        "nometric",
    )
    assert ran.code == 1
    assert ran.err.strip().splitlines()[-1].startswith("error: no trial of study 'nometric' completed")
    trial = json.loads(ran.out)["trials"][0]
    assert trial["state"] == "FAIL"
    assert "did not log the objective metric 'val_loss'" in trial["error"]
    run = mlflow.MlflowClient(lab_up).get_run(trial["run_id"])
    assert "did not log the objective metric 'val_loss'" in run.data.tags["lab.error"]


def kernels_of(run_id: str) -> list[int]:
    import psutil

    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("MLFLOW_RUN_ID") == run_id:
                found.append(process.pid)
        except psutil.Error:
            continue
    return found


def test_timeout_stops_the_kernel_and_fails_the_trial(lab, lab_up, tmp_path):
    hold = tmp_path / "hold"
    hold.write_text("")
    ran = dispatch(
        lab,
        tmp_path,
        str(PROBE),
        "--space",
        str(probe_space(tmp_path, hold=str(hold))),
        "--trials",
        "1",
        "--study",
        "slow",
        "--timeout",
        "4",
    )
    assert ran.code == 1
    trial = json.loads(ran.out)["trials"][0]
    assert trial["state"] == "FAIL"
    assert "longer than --timeout 4 s" in trial["error"]
    # held until killed: a bound far below the hold's end (none) and generous for a loaded machine
    assert 4 <= trial["seconds"] < 40
    assert kernels_of(trial["run_id"]) == [], "the kernel outlived its trial"


def test_a_slot_that_dies_is_rerun_with_the_same_parameters(lab, lab_up, state, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    ran = dispatch(
        lab,
        tmp_path,
        str(PROBE),
        "--space",
        str(probe_space(tmp_path, mode="die_once", marker_dir=str(markers))),
        "--trials",
        "2",
        "--parallel",
        "2",
        "--study",
        "dies",
    )
    assert ran.code == 0, ran.err
    trials = json.loads(ran.out)["trials"]
    assert [(t["state"], t["attempts"]) for t in trials] == [("COMPLETE", 2), ("COMPLETE", 2)], [
        t.get("error") for t in trials
    ]
    client = mlflow.MlflowClient(lab_up)
    runs = client.search_runs([client.get_experiment_by_name("dies").experiment_id])
    assert len(runs) == 4
    for trial in trials:
        attempts = [r for r in runs if r.data.tags["lab.trial"] == str(trial["number"])]
        assert sorted(r.info.status for r in attempts) == ["FAILED", "FINISHED"]
        assert len({r.data.params["x"] for r in attempts}) == 1, "the retry used the same parameters"
    log = (state / "sweeps" / "dies" / "dispatch.log").read_text()
    assert "(attempt 2, again because the slot's process died (" in log, log


def test_slots_carry_their_gpu(lab, lab_up, tmp_path):
    ran = dispatch(
        lab,
        tmp_path,
        str(PROBE),
        "--space",
        str(probe_space(tmp_path)),
        "--trials",
        "4",
        "--parallel",
        "2",
        "--gpus",
        "0,1",
        "--study",
        "gpus",
    )
    assert ran.code == 0, ran.err
    client = mlflow.MlflowClient(lab_up)
    for trial in json.loads(ran.out)["trials"]:
        run = client.get_run(trial["run_id"])
        assert run.data.tags["cuda_visible_devices"] == trial["slot"][3]  # gpu0-0 -> "0", gpu1-1 -> "1"


def dispatch_while_trials_run(
    argv: list[str], out: Path, trials: int, sigint: Callable[[], None] = sigint_default
) -> subprocess.Popen[str]:
    """`lab dispatch` in the background (Ctrl-C reaches it, unless `sigint` is sigint_ignore: as a shell's background
    job or cron starts it), once `trials` of its trials are running (their output notebooks exist) and a second
    more."""
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ, preexec_fn=sigint
    )
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.ipynb"))) < trials:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the trials never started"
        time.sleep(0.2)
    time.sleep(1)
    return process


def test_ctrl_c_stops_trials_and_the_study_resumes(lab, lab_up, state, tmp_path):
    hold = tmp_path / "hold"
    hold.write_text("")
    space = probe_space(tmp_path, hold=str(hold))
    out = tmp_path / "out"
    argv = [
        str(LAB),
        "dispatch",
        str(PROBE),
        "--space",
        str(space),
        "--trials",
        "4",
        "--parallel",
        "2",
        "--study",
        "resume",
        "--local",
        "--json",
        "--output",
        str(out / "{trial}.ipynb"),
    ]
    process = dispatch_while_trials_run(argv, out, 2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err

    study = study_of(state, "resume")
    interrupted = [t for t in study.trials if t.state.name == "FAIL"]
    waiting = [t for t in study.trials if t.state.name == "WAITING"]
    seen = [(t.number, t.state.name, t.user_attrs) for t in study.trials]
    assert len(interrupted) == 2 and all(t.user_attrs["lab_interrupted"] for t in interrupted), (seen, err)
    queued = sorted(t.system_attrs["fixed_params"]["x"] for t in waiting)
    assert queued == sorted(t.params["x"] for t in interrupted), "their parameters are queued to run again"
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    client = mlflow.MlflowClient(lab_up)
    for trial in interrupted:
        assert client.get_run(trial.user_attrs["mlflow_run_id"]).info.status == "KILLED"
        assert kernels_of(trial.user_attrs["mlflow_run_id"]) == []
    listed = {s["name"]: s for s in json.loads(lab("sweeps", "--local", "--json").out)}["resume"]
    assert (listed["status"], listed["failed"], listed["interrupted"]) == ("stopped", 0, 2), listed

    hold.unlink()
    ran = lab(*argv[1:], timeout=600)
    assert ran.code == 0, ran.err
    study = study_of(state, "resume")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4
    assert {t.params["x"] for t in interrupted} <= {t.params["x"] for t in complete}, "interrupted trials re-ran"
    listed = {s["name"]: s for s in json.loads(lab("sweeps", "--local", "--json").out)}["resume"]
    assert (listed["status"], listed["failed"]) == ("finished", 0), listed
    log = (state / "sweeps" / "resume" / "dispatch.log").read_text()
    assert "interrupted earlier)" in log and "sweep resume stopped" in log, log


def test_bad_space_names_the_field(lab, lab_up, tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "objective: {metric: val_loss, direction: down}\n"
        "params:\n  lr: {type: float, low: 0.1, high: 0.01}\n  n: {type: integer, low: 1, high: 3}\n"
    )
    ran = lab("dispatch", str(PROBE), "--space", str(bad), "--local")
    assert ran.code == 1
    line = ran.err.strip()
    assert "objective.direction: must be minimize or maximize, got 'down'" in line
    assert "params.lr: high (0.01) must be greater than low (0.1)" in line
    assert "params.n.type: must be one of float, int, categorical, got 'integer'" in line
    assert len(line.splitlines()) == 1


def test_dispatch_needs_the_lab_up(lab, tmp_path):
    ran = lab("dispatch", str(PROBE), "--space", str(probe_space(tmp_path)), "--local")
    assert ran.code == 1
    assert ran.err.strip() == "error: the local lab is not up; start it with `lab up --local`"


def test_same_seed_same_metrics(lab, lab_up, state, tmp_path):
    """Two studies with the same sampler seed propose the same parameters and trial seeds; with
    seed_everything in the notebook, every metric comes out identical."""
    values = {}
    for name in ("twin-a", "twin-b"):
        ran = dispatch(
            lab,
            tmp_path,
            str(QUICKSTART / "quickstart.ipynb"),
            "--space",
            str(QUICKSTART / "space.yml"),
            "--trials",
            "2",
            "--parallel",
            "2",
            "--study",
            name,
        )
        assert ran.code == 0, ran.err
        values[name] = sorted((t["number"], t["params"]["lr"], t["value"]) for t in json.loads(ran.out)["trials"])
    assert values["twin-a"] == values["twin-b"]
    client = mlflow.MlflowClient(lab_up)
    histories = [
        [m.value for m in client.get_metric_history(t, "train_loss")]
        for t in (study_of(state, n).trials[0].user_attrs["mlflow_run_id"] for n in ("twin-a", "twin-b"))
    ]
    assert histories[0] == histories[1] and len(histories[0]) == 3


def probe_spec(tracking_uri: str, state: Path, tmp_path: Path, study: str, trials: int) -> Any:
    """The probe notebook's sweep on the local lab, for the tests that run the engine with slots of their own."""
    from toolkit.sweeps import dispatch as engine
    from toolkit.sweeps import space

    return engine.SweepSpec(
        notebook=PROBE,
        space=space.load(probe_space(tmp_path)),
        study=study,
        trials=trials,
        timeout=None,
        output_pattern=str(tmp_path / "out/{trial}-{run_id}.ipynb"),
        tracking_uri=tracking_uri,
        storage_path=state / "tracker" / "optuna.db",
    )


def test_a_trial_whose_slot_went_away_runs_on_another_slot(lab_up, state, tmp_path):
    """The sweep's side of a worker that disappears: its slot reports `lost` (as an SSH slot does when
    its host stops answering; that slot is tested on real hosts in tests/labs/ssh), takes no more trials,
    and the trial runs again on a slot that is still there."""
    import threading

    from toolkit.sweeps import dispatch as engine
    from toolkit.sweeps import slots

    class VanishingSlot(slots.LocalSlot):
        def __init__(self) -> None:
            super().__init__(name="vanishing")
            self.jobs = 0

        def run(self, job: slots.Job, cancel: threading.Event) -> slots.Outcome:
            self.jobs += 1
            return slots.Outcome("lost", 0.1, "the host stopped answering")

    vanishing = VanishingSlot()
    spec = probe_spec(lab_up, state, tmp_path, "vanish", 3)
    sweep = engine.Sweep(spec, [vanishing, slots.LocalSlot(name="steady")])
    progress = sweep.run()
    assert vanishing.jobs == 1, "a slot whose host went away takes no more trials"
    assert sweep.lost_slots == ["vanishing"]
    assert [r.state for r in progress.results] == ["COMPLETE"] * 3
    moved = [r for r in progress.results if r.attempts == 2]
    assert len(moved) == 1 and moved[0].slot == "steady"
    runs = mlflow.MlflowClient(lab_up).search_runs([sweep.experiment_id], max_results=50)
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(runs) == 4 and len(failed) == 1
    assert "went away" in failed[0].data.tags["lab.error"]
    assert study_of(state, "vanish").trials[moved[0].number].params == moved[0].params


def test_a_trial_handed_back_late_still_runs_after_the_other_slots_finished(lab_up, state, tmp_path):
    """What a worker powered off mid-trial showed on real hosts (tests/labs/ssh/test_ssh_target.py): the other
    slot had run every other trial and waited; the trial's runner was killed as its host shut down (`died`),
    its retry found the host gone (`lost`). The trial must stay the slot's until it is handed back, however
    long the tracker takes to mark the failed attempts, or the waiting slot leaves and it never runs."""
    import threading
    import time

    from toolkit.sweeps import dispatch as engine
    from toolkit.sweeps import slots

    def others_finished(sweep: engine.Sweep) -> bool:
        progress = sweep.progress
        if progress is None or len(progress.results) < progress.planned:
            return False
        return all(r.slot_end > 0 for r in progress.results if r.slot != "going")

    class ShuttingDownSlot(slots.LocalSlot):
        def __init__(self) -> None:
            super().__init__(name="going")
            self.said: list[str] = []
            self.sweep: engine.Sweep | None = None

        def run(self, job: slots.Job, cancel: threading.Event) -> slots.Outcome:
            if self.said:
                self.said.append("lost")
                return slots.Outcome("lost", 0.1, "the host stopped answering")
            deadline = time.monotonic() + 120
            while self.sweep is not None and not others_finished(self.sweep) and time.monotonic() < deadline:
                time.sleep(0.05)
            self.said.append("died")
            return slots.Outcome("died", 0.1, "the slot's runner was killed by signal 15")

    class SlowTracker(engine.Sweep):
        def _fail_run(self, run_id: str, error: str, status: str) -> None:
            time.sleep(1.0)  # a tracker that takes a second to answer
            super()._fail_run(run_id, error, status)

    going = ShuttingDownSlot()
    spec = probe_spec(lab_up, state, tmp_path, "late", 3)
    sweep = SlowTracker(spec, [going, slots.LocalSlot(name="steady")])
    going.sweep = sweep
    progress = sweep.run()
    assert going.said == ["died", "lost"]
    assert [r.state for r in progress.results] == ["COMPLETE"] * 3, [(r.state, r.error) for r in progress.results]
    moved = [r for r in progress.results if r.attempts == 3]
    assert len(moved) == 1 and moved[0].slot == "steady"


def test_trials_fail_when_every_slot_went_away(lab_up, state, tmp_path):
    import threading

    from toolkit.sweeps import dispatch as engine
    from toolkit.sweeps import slots

    class GoneSlot(slots.LocalSlot):
        def run(self, job: slots.Job, cancel: threading.Event) -> slots.Outcome:
            return slots.Outcome("lost", 0.1, "the host stopped answering")

    spec = probe_spec(lab_up, state, tmp_path, "all-gone", 2)
    sweep = engine.Sweep(spec, [GoneSlot(name="a"), GoneSlot(name="b")])
    progress = sweep.run()
    assert [r.state for r in progress.results] == ["FAIL", "FAIL"]
    assert any("no slot was left" in r.error for r in progress.results)


def test_each_trial_gets_its_slots_share_of_the_price(lab, lab_up, state, tmp_path, isolated):
    # This machine at $3.60/hour, shared by two slots: a trial of s seconds costs 1.8 * s / 3600.
    (isolated / ".lab" / "prices.yaml").write_text("hosts: {local: 3.6}\n")
    ran = dispatch(
        lab,
        tmp_path,
        str(PROBE),
        "--space",
        str(probe_space(tmp_path, mode="ok")),
        "--trials",
        "2",
        "--parallel",
        "2",
        "--study",
        "priced",
    )
    assert ran.code == 0, ran.err
    summary = json.loads(ran.out)
    client = mlflow.MlflowClient(lab_up)
    study = study_of(state, "priced")
    for trial in summary["trials"]:
        expected = 1.8 * trial["seconds"] / 3600
        assert trial["cost_usd"] == pytest.approx(expected, rel=1e-3)
        run = client.get_run(trial["run_id"])
        assert run.data.metrics["cost_usd"] == pytest.approx(expected, rel=1e-3)
        assert study.trials[trial["number"]].user_attrs["cost_usd"] == pytest.approx(expected, rel=1e-3)
    # The total is the exact sum rounded once; each trial's figure is rounded too (to 1e-6 dollars).
    trial_costs = [t["cost_usd"] for t in summary["trials"]]
    assert summary["cost_usd"] == pytest.approx(sum(trial_costs), abs=1e-6 * len(trial_costs))

    ran = lab("cost", "--local", "--json")
    assert ran.code == 0, ran.err
    (sweep,) = [s for s in json.loads(ran.out)["sweeps"] if s["sweep"] == "priced"]  # the module's lab has others
    assert sweep["trials"] == 2
    assert sweep["usd"] == pytest.approx(summary["cost_usd"], rel=1e-3)

    # Without a price, no cost is made up.
    (isolated / ".lab" / "prices.yaml").unlink()
    ran = dispatch(
        lab, tmp_path, str(PROBE), "--space", str(probe_space(tmp_path, mode="ok")), "--trials", "1", "--study", "free"
    )
    assert ran.code == 0, ran.err
    (trial,) = json.loads(ran.out)["trials"]
    assert trial["cost_usd"] is None
    assert "cost_usd" not in client.get_run(trial["run_id"]).data.metrics


def test_a_kernel_that_dies_is_told_from_a_notebook_that_raises(tmp_path):
    """The slot's own verdict, straight from a real papermill run: a dead kernel is `died` (run again),
    an exception is `failed` (not run again)."""
    import threading

    from toolkit.sweeps import slots

    def outcome(mode: str) -> slots.Outcome:
        job = slots.Job(
            notebook=PROBE,
            output=tmp_path / f"{mode}.ipynb",
            parameters={"mode": mode, "marker_dir": str(tmp_path), "trial_number": 0},
            env={},
            timeout=300,
        )
        return slots.LocalSlot(name="slot-0").run(job, threading.Event())

    died = outcome("die_once")
    assert died.kind == "died", died.error
    raised = outcome("raise")
    assert raised.kind == "failed", raised.error
    assert "boom in trial 0" in raised.error
    assert slots.kernel_died(slots.PAPERMILL_DEAD_KERNEL, "") and not slots.kernel_died(1, raised.error)


@pytest.mark.own_lab  # `lab down` is what it tests
def test_down_stops_a_running_sweep_as_ctrl_c_does_before_anything_stops(lab, lab_up, state, tmp_path):
    """`lab down` while `lab dispatch` runs: the dispatcher is interrupted first (its trials stopped, marked
    interrupted, their parameters queued), while MLflow still takes their last writes; then the snapshot."""
    hold = tmp_path / "hold"
    hold.write_text("")
    out = tmp_path / "out"
    argv = [str(LAB), "dispatch", str(PROBE), "--space", str(probe_space(tmp_path, hold=str(hold)))]
    argv += ["--trials", "4", "--parallel", "2", "--study", "overnight", "--local", "--json"]
    argv += ["--output", str(out / "{trial}.ipynb")]
    process = dispatch_while_trials_run(argv, out, 2, sigint=sigint_ignore)  # as from cron: `down` still stops it
    try:
        ran = lab("down", "--local", "--json", timeout=300)
        assert ran.code == 0, ran.err
        assert json.loads(ran.out)["sweeps_interrupted"] == ["overnight"]
        said = ran.err.splitlines()
        first = next(i for i, line in enumerate(said) if line.startswith("stopping the sweep of study 'overnight'"))
        assert first < next(i for i, line in enumerate(said) if line.startswith("mlflow stopped")), said
        assert process.wait(timeout=10) == 130, "the dispatcher had ended before down went on"
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    study = study_of(state, "overnight")
    interrupted = [t for t in study.trials if t.state.name == "FAIL" and t.user_attrs.get("lab_interrupted")]
    waiting = [t for t in study.trials if t.state.name == "WAITING"]
    assert len(interrupted) == 2 and not [t for t in study.trials if t.state.name == "RUNNING"]
    assert sorted(t.system_attrs["fixed_params"]["x"] for t in waiting) == sorted(t.params["x"] for t in interrupted)
    for trial in interrupted:
        assert kernels_of(trial.user_attrs["mlflow_run_id"]) == []
    # The down snapshot holds the study as it was left: the interrupted trials and their queued parameters.
    newest = max((state / "backups").glob("*/optuna.db"), key=lambda p: p.parent.name)
    saved = optuna.load_study(study_name="overnight", storage=f"sqlite:///{newest}")
    assert len([t for t in saved.trials if t.state.name == "WAITING"]) == 2
