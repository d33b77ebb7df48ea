"""The local slot's warm kernels (toolkit.sweeps.runner): the next trial's kernel is started while the current
trial runs, yet every trial gets a fresh kernel, its own environment, and the slot's old contract (cancel,
--timeout, a dead kernel, Job.log). Real runners, real ipykernel kernels, a real MLflow server."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from toolkit.sweeps import slots

mlflow = pytest.importorskip("mlflow")

# The tests that need *a* lab share one for the module (tests/labs/local/conftest.py: `shared_lab`).
pytestmark = pytest.mark.shared_lab

# The notebook reports what it saw to `report` (a JSON file): its process, whether a global of an earlier
# trial is still there, the trial's variables, whether mlflow was imported before it asked.
PARAMETERS = 'report = ""\nmode = "ok"\nhold = ""\ntrial_number = 0\nseed = 0'
BODY = """\
import json, os, subprocess, sys, time
from pathlib import Path

seen = {
    "pid": os.getpid(),
    "left_over": globals().get("LEFT_BY_A_TRIAL"),
    "mlflow_preloaded": "mlflow" in sys.modules,
    "env": {
        k: os.environ.get(k)
        for k in ("MLFLOW_RUN_ID", "LAB_RESUME_RUN_ID", "CUDA_VISIBLE_DEVICES", "AWS_SECRET_ACCESS_KEY")
    },
    "cwd": os.getcwd(),
    "notebook_dir": os.environ.get("LAB_NOTEBOOK_DIR"),
}
LEFT_BY_A_TRIAL = trial_number
if mode == "child":
    seen["child"] = subprocess.Popen(["sleep", "300"]).pid
Path(report).write_text(json.dumps(seen))
print(f"trial {trial_number} started", flush=True)
while hold and Path(hold).exists():
    time.sleep(0.05)
if mode == "raise":
    raise ValueError(f"boom in trial {trial_number}")
if mode == "die":
    os._exit(3)
if mode == "mlflow":
    import mlflow
    with mlflow.start_run():
        mlflow.log_metric("val_loss", 0.25)
print(f"trial {trial_number} done")
"""


@pytest.fixture
def notebook(tmp_path: Path) -> Path:
    folder = tmp_path / "experiment"
    folder.mkdir()
    params = new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    document = new_notebook(cells=[params, new_code_cell(BODY)])
    document.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / "probe.ipynb"
    nbformat.write(document, path)
    return path


@pytest.fixture
def slot():
    made = slots.LocalSlot(name="slot-0", env={"CUDA_VISIBLE_DEVICES": "3"})
    yield made
    made.close()


def job(notebook: Path, tmp_path: Path, number: int, env: dict[str, str] | None = None, **parameters) -> slots.Job:
    timeout, log = parameters.pop("timeout", 120), parameters.pop("log", None)
    return slots.Job(
        notebook=notebook,
        output=tmp_path / "out" / f"{number}.ipynb",
        parameters={"report": str(tmp_path / f"seen-{number}.json"), "trial_number": number, **parameters},
        env=env if env is not None else {"MLFLOW_RUN_ID": f"run{number}"},
        timeout=timeout,
        log=log,
    )


def seen(tmp_path: Path, number: int) -> dict:
    return json.loads((tmp_path / f"seen-{number}.json").read_text())


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(check, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_each_trial_gets_a_fresh_kernel_started_before_it_with_its_own_environment(
    slot, notebook, tmp_path, monkeypatch
):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-kernels")
    first = slot.run(job(notebook, tmp_path, 0), threading.Event())
    assert first.kind == "ok", first.error
    second = slot.run(
        job(notebook, tmp_path, 1, env={"MLFLOW_RUN_ID": "run1", "LAB_RESUME_RUN_ID": "run0"}), threading.Event()
    )
    assert second.kind == "ok", second.error
    one, two = seen(tmp_path, 0), seen(tmp_path, 1)
    assert one["pid"] != two["pid"] and gone(one["pid"]) and gone(two["pid"]), "a kernel serves one trial, then ends"
    assert two["left_over"] is None, "nothing of the previous trial is left in the kernel"
    assert two["mlflow_preloaded"] and one["mlflow_preloaded"], "the contract's imports are done before the trial"
    assert two["env"] == {
        "MLFLOW_RUN_ID": "run1",
        "LAB_RESUME_RUN_ID": "run0",
        "CUDA_VISIBLE_DEVICES": "3",
        "AWS_SECRET_ACCESS_KEY": None,
    }
    assert one["env"]["LAB_RESUME_RUN_ID"] is None, "a trial's variables are its own"
    assert two["cwd"] == str(tmp_path / "out" / "1"), "a trial works in its own folder, beside its executed notebook"
    assert two["notebook_dir"] == str(notebook.parent)
    # The variables were put in the kernel out of band: the executed notebook does not hold them.
    executed = (tmp_path / "out" / "1.ipynb").read_text()
    assert "run0" not in executed and "run1" not in executed
    cells = nbformat.reads(executed, as_version=4).cells
    assert [c.execution_count for c in cells] == [1, 2, 3], "no hidden cell took an execution count"


def forked_kernels(slot: slots.LocalSlot) -> set[int]:
    """The kernels the slot's runner keeps: the children of its fork server."""
    runner = psutil.Process(slot.runner.process.pid)
    servers = [p for p in runner.children() if "--zygote" in p.cmdline()]
    return {kernel.pid for server in servers for kernel in server.children()}


def test_the_next_kernel_is_warm_before_the_slot_is_free(slot, notebook, tmp_path):
    hold = tmp_path / "hold"
    hold.write_text("")
    running = threading.Thread(
        target=lambda: slot.run(job(notebook, tmp_path, 0, hold=str(hold)), threading.Event()), daemon=True
    )
    running.start()
    wait_for(lambda: (tmp_path / "seen-0.json").exists())
    trial_kernel = seen(tmp_path, 0)["pid"]

    wait_for(lambda: forked_kernels(slot) - {trial_kernel}, 90)
    warm = forked_kernels(slot) - {trial_kernel}
    hold.unlink()
    running.join(60)
    outcome = slot.run(job(notebook, tmp_path, 1), threading.Event())
    assert outcome.kind == "ok", outcome.error
    assert seen(tmp_path, 1)["pid"] in warm, "the second trial ran in the kernel started while the first one ran"
    assert gone(trial_kernel)


def test_job_log_gets_the_trials_output_while_it_runs_appended(slot, notebook, tmp_path):
    log = tmp_path / "logs" / "trial-0.log"
    log.parent.mkdir()
    log.write_text("an earlier attempt\n")
    hold = tmp_path / "hold"
    hold.write_text("")
    outcome: list[slots.Outcome] = []
    running = threading.Thread(
        target=lambda: outcome.append(slot.run(job(notebook, tmp_path, 0, hold=str(hold), log=log), threading.Event()))
    )
    running.start()
    wait_for(lambda: "trial 0 started" in log.read_text())
    assert running.is_alive(), "the output was there while the trial ran"
    hold.unlink()
    running.join(60)
    assert outcome[0].kind == "ok", outcome[0].error
    text = log.read_text()
    assert text.startswith("an earlier attempt\n") and "trial 0 done" in text


@pytest.mark.parametrize("stop", ["timeout", "cancelled"])
def test_timeout_and_cancel_kill_the_kernel_and_what_it_started(slot, notebook, tmp_path, stop):
    hold = tmp_path / "hold"
    hold.write_text("")
    cancel = threading.Event()
    if stop == "cancelled":
        threading.Thread(
            target=lambda: (wait_for(lambda: (tmp_path / "seen-0.json").exists()), cancel.set()), daemon=True
        ).start()
    assert slot.run(job(notebook, tmp_path, 9), threading.Event()).kind == "ok"  # the runner is up, a kernel warm
    started = time.monotonic()
    timeout = 15 if stop == "timeout" else 120
    outcome = slot.run(job(notebook, tmp_path, 0, hold=str(hold), mode="child", timeout=timeout), cancel)
    assert outcome.kind == stop, outcome.error
    assert time.monotonic() - started < timeout + 10
    if stop == "timeout":
        assert "longer than --timeout 15 s" in outcome.error
    report = seen(tmp_path, 0)
    wait_for(lambda: gone(report["pid"]) and gone(report["child"]), 10)
    # The slot goes on: its next trial gets a new runner and a fresh kernel.
    hold.unlink()
    after = slot.run(job(notebook, tmp_path, 1), threading.Event())
    assert after.kind == "ok", after.error
    assert seen(tmp_path, 1)["pid"] != report["pid"]


def test_a_dead_kernel_is_died_a_raise_is_failed_and_a_dead_runner_is_died(slot, notebook, tmp_path):
    died = slot.run(job(notebook, tmp_path, 0, mode="die"), threading.Event())
    assert died.kind == "died", died.error
    raised = slot.run(job(notebook, tmp_path, 1, mode="raise"), threading.Event())
    assert raised.kind == "failed" and "ValueError: boom in trial 1" in raised.error, raised.error

    hold = tmp_path / "hold"
    hold.write_text("")
    threading.Thread(
        target=lambda: (
            wait_for(lambda: (tmp_path / "seen-2.json").exists()),
            os.kill(slot.runner.process.pid, 9),
        ),
        daemon=True,
    ).start()
    lost = slot.run(job(notebook, tmp_path, 2, hold=str(hold)), threading.Event())
    assert lost.kind == "died" and "runner killed by signal 9" in lost.error, lost.error
    wait_for(lambda: gone(seen(tmp_path, 2)["pid"]), 15)  # its kernel follows it (the fork server ends too)
    hold.unlink()
    assert slot.run(job(notebook, tmp_path, 3), threading.Event()).kind == "ok"


def test_a_runner_whose_process_ended_is_gone_though_a_process_it_left_holds_its_output(notebook, tmp_path):
    """An SSH session that ended while something still holds its output pipe (a process it left behind, a
    connection master): the trial is `died` within seconds and the slot can take another runner, where the
    pipe's end alone would never come."""
    import signal

    runner = slots.RunnerProcess(["sh", "-c", "sleep 300 & read job; exit 0"], None, local=False)
    ended: list[tuple[slots.Outcome, bool]] = []
    try:
        driving = threading.Thread(
            target=lambda: ended.append(slots.drive(runner, job(notebook, tmp_path, 0), threading.Event(), {})),
            daemon=True,
        )
        started = time.monotonic()
        driving.start()
        driving.join(timeout=30)
        assert ended, "drive() still waits for a runner whose process ended"
        (outcome, usable) = ended[0]
        assert outcome.kind == "died" and "runner exited with 0" in outcome.error, outcome.error
        assert not usable
        assert time.monotonic() - started < slots.GONE_AFTER_EXIT_S + 5
    finally:
        os.killpg(runner.process.pid, signal.SIGKILL)  # the sleep, in the runner's session


def test_close_stops_the_runner_and_its_warm_kernel(notebook, tmp_path):
    slot = slots.LocalSlot(name="slot-0")
    assert slot.run(job(notebook, tmp_path, 0), threading.Event()).kind == "ok"
    runner = psutil.Process(slot.runner.process.pid)
    family = [runner, *runner.children(recursive=True)]
    assert len(family) >= 2, "the runner keeps a kernel (or its fork server) between trials"
    slot.close()
    wait_for(lambda: all(gone(p.pid) for p in family), 15)
    assert slot.runner is None


def test_mlflow_start_run_in_a_warm_kernel_logs_into_the_trials_run(slot, notebook, tmp_path, lab_up):
    tracker = lab_up
    client = mlflow.MlflowClient(tracker)
    experiment = client.create_experiment("warm")
    for number in range(2):  # the first kernel is started for its trial, the second one ahead of it
        run = client.create_run(experiment).info.run_id
        env = {"MLFLOW_TRACKING_URI": tracker, "MLFLOW_RUN_ID": run, "MLFLOW_EXPERIMENT_ID": experiment}
        outcome = slot.run(job(notebook, tmp_path, number, env=env, mode="mlflow"), threading.Event())
        assert outcome.kind == "ok", outcome.error
        assert client.get_run(run).data.metrics == {"val_loss": 0.25}
    assert len(client.search_runs([experiment])) == 2, "no run was made besides the trials' own"


def test_only_this_pythons_own_kernels_are_forked_from_the_warm_state(tmp_path):
    """Another venv's python is a link to the same interpreter, but its packages are its own (an experiment's
    environment): its kernels are started as themselves, never forked from the runner's warm process."""
    import sys

    from toolkit.sweeps.runner import Zygote

    other = tmp_path / "env" / "bin"
    other.mkdir(parents=True)
    (other / "python").symlink_to(os.path.realpath(sys.executable))
    assert Zygote.can_start([sys.executable, "-m", "ipykernel_launcher", "-f", "x.json"])
    assert Zygote.can_start(["python3", "-m", "ipykernel_launcher", "-f", "x.json"])
    assert not Zygote.can_start([str(other / "python"), "-m", "ipykernel_launcher", "-f", "x.json"])
    assert not Zygote.can_start([sys.executable, "-m", "ipykernel", "-f", "x.json"])
