"""toolkit.checkpoints against a real MLflow server (proxied artifacts), and a retry through `lab dispatch` that
resumes from the checkpoint its killed kernel left."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port
from toolkit import checkpoints
from toolkit.errors import LabError

mlflow = pytest.importorskip("mlflow")
optuna = pytest.importorskip("optuna")

# The tests that need *a* lab share one for the module (tests/labs/local/conftest.py: `shared_lab`).
pytestmark = pytest.mark.shared_lab

RESUME = ROOT / "tests" / "data" / "notebooks" / "resume.ipynb"
BIG = 96 << 20  # bytes: an upload that takes a while, even to a server on this machine


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` as the local lab starts it (proxied artifacts in a folder, one worker), for this module."""
    folder = tmp_path_factory.mktemp("tracker")
    port = free_port()
    argv = [
        *(sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"),
        *("--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts"),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                assert process.poll() is None, "mlflow server exited"
                assert time.monotonic() < deadline, "mlflow server did not answer"
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def client(server: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    for name in ("MLFLOW_RUN_ID", checkpoints.RESUME_ENV, checkpoints.DIR_ENV):
        monkeypatch.delenv(name, raising=False)
    yield mlflow.MlflowClient(server)
    checkpoints.flush()  # nothing of one test is left uploading into the next


def new_run(client, monkeypatch: pytest.MonkeyPatch | None = None, **tags: str) -> str:
    experiment = client.get_experiment_by_name("checkpoints") or client.get_experiment(
        client.create_experiment("checkpoints")
    )
    run_id = client.create_run(experiment.experiment_id, tags=tags).info.run_id
    if monkeypatch is not None:
        monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    return run_id


def files(step: int) -> list[str]:
    """A checkpoint's record and payload: torch.save once the process has imported PyTorch, else pickle."""
    return [f"step-{step:010d}.json", f"step-{step:010d}.{'pt' if 'torch' in sys.modules else 'pkl'}"]


def names(client, run_id: str) -> list[str]:
    return sorted(Path(a.path).name for a in client.list_artifacts(run_id, checkpoints.FOLDER))


def test_save_returns_before_the_upload_and_flush_waits_for_it(client, monkeypatch):
    run_id = new_run(client, monkeypatch)
    state = {"weights": bytearray(BIG), "epoch": 7}

    started = time.monotonic()
    checkpoints.save(state, 7)
    saved = time.monotonic() - started
    listed = names(client, run_id)  # right after save returned: the upload is still running
    state["weights"][0] = 255  # training goes on changing its state: the checkpoint must not change
    state["epoch"] = 8
    started = time.monotonic()
    checkpoints.flush()
    flushed = time.monotonic() - started

    assert "step-0000000007.json" not in listed, f"save waited for its upload ({saved:.2f} s)"
    assert names(client, run_id) == files(7)
    print(f"save of {BIG >> 20} MiB returned in {saved:.2f} s; flush waited {flushed:.2f} s more for the upload")
    obj, step = checkpoints.load_latest()
    assert step == 7 and obj["epoch"] == 7 and obj["weights"][0] == 0 and len(obj["weights"]) == BIG


def test_memory_stays_bounded_and_the_newest_save_wins(client, monkeypatch):
    run_id = new_run(client, monkeypatch)
    spooled = []
    for step in range(1, 6):
        checkpoints.save({"step": step, "blob": bytes(BIG // 2)}, step)
        spooled.append(len(list(checkpoints._spool_folder().rglob("step-*.p*"))))
    checkpoints.flush()

    assert max(spooled) <= 2, f"at most one upload in flight and one waiting, spooled: {spooled}"
    uploaded = [n for n in names(client, run_id) if n.endswith(".json")]
    assert "step-0000000005.json" in uploaded, "the newest save is always uploaded"
    assert len(uploaded) < 5, f"waiting saves were replaced by newer ones, not queued: {uploaded}"
    assert list(checkpoints._spool_folder().iterdir()) == [], "uploaded checkpoints leave the local disk"
    assert checkpoints.load_latest()[1] == 5


def test_load_latest_picks_the_newest_step(client, monkeypatch):
    new_run(client, monkeypatch)
    assert checkpoints.load_latest() is None, "a run without checkpoints"
    for step in (3, 10, 9):
        checkpoints.save({"at": step}, step)
        checkpoints.flush()
    assert checkpoints.load_latest() == ({"at": 10}, 10)


def test_a_retry_falls_back_to_the_run_it_repeats_and_further_back(client, monkeypatch):
    first = new_run(client, monkeypatch)
    checkpoints.save({"from": "first"}, 4)
    checkpoints.flush()
    second = new_run(client, monkeypatch, **{checkpoints.RESUMES_TAG: first})  # died before its first save
    third = new_run(client, monkeypatch, **{checkpoints.RESUMES_TAG: second})
    monkeypatch.setenv(checkpoints.RESUME_ENV, second)

    assert checkpoints.load_latest() == ({"from": "first"}, 4), "two attempts back"

    monkeypatch.setenv("MLFLOW_RUN_ID", second)
    monkeypatch.setenv(checkpoints.RESUME_ENV, first)
    checkpoints.save({"from": "second"}, 2)
    checkpoints.flush()
    monkeypatch.setenv("MLFLOW_RUN_ID", third)
    monkeypatch.setenv(checkpoints.RESUME_ENV, second)
    assert checkpoints.load_latest() == ({"from": "second"}, 2), "the nearest attempt with a checkpoint wins"

    checkpoints.save({"from": "third"}, 1)
    assert checkpoints.load_latest() == ({"from": "third"}, 1), "the run's own checkpoint first, even at a lower step"

    monkeypatch.delenv(checkpoints.RESUME_ENV)
    monkeypatch.setenv("MLFLOW_RUN_ID", new_run(client, None, **{checkpoints.RESUMES_TAG: second}))
    assert checkpoints.load_latest() == ({"from": "second"}, 2), "without the variable, the run's own tag"


def put(client, run_id: str, folder: Path, name: str, data: bytes) -> None:
    path = folder / name
    path.write_bytes(data)
    client.log_artifact(run_id, str(path), checkpoints.FOLDER)
    path.unlink()


def record(step: int, payload: bytes, fmt: str = "pickle") -> bytes:
    file = f"step-{step:010d}.{checkpoints.FORMATS[fmt]}"
    digest = hashlib.sha256(payload).hexdigest()
    return json.dumps({"step": step, "file": file, "bytes": len(payload), "sha256": digest, "format": fmt}).encode()


def test_an_incomplete_checkpoint_is_never_loaded(client, monkeypatch, tmp_path):
    run_id = new_run(client, monkeypatch)
    checkpoints.save({"good": 1}, 1)
    checkpoints.flush()
    payload = pickle.dumps({"bad": True})
    put(client, run_id, tmp_path, "step-0000000005.pkl", payload)  # cut before its record was uploaded
    put(client, run_id, tmp_path, "step-0000000004.pkl", payload[:-7])  # the payload's upload was cut
    put(client, run_id, tmp_path, "step-0000000004.json", record(4, payload))
    put(client, run_id, tmp_path, "step-0000000003.pkl", payload[::-1])  # the right size, other bytes
    put(client, run_id, tmp_path, "step-0000000003.json", record(3, payload))
    put(client, run_id, tmp_path, "step-0000000002.pkl", payload)
    put(client, run_id, tmp_path, "step-0000000002.json", record(2, payload)[:40])  # the record's upload was cut

    with pytest.warns(checkpoints.CheckpointWarning) as warned:
        assert checkpoints.load_latest() == ({"good": 1}, 1)
    assert sorted(str(w.message).split()[2] for w in warned) == ["2", "3", "4"]


def test_a_process_killed_mid_upload_leaves_the_previous_checkpoint(client, monkeypatch, server):
    run_id = new_run(client, monkeypatch)
    script = (
        "from toolkit import checkpoints\n"
        "checkpoints.save({'step': 1}, 1)\n"
        "checkpoints.flush()\n"
        f"checkpoints.save(bytes({4 * BIG}), 2)\n"
        "print('uploading', flush=True)\n"
        "import time; time.sleep(120)\n"
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT) as process:
        try:
            assert process.stdout.readline().strip() == "uploading"
        finally:
            os.kill(process.pid, signal.SIGKILL)
    assert "step-0000000002.json" not in names(client, run_id)
    assert checkpoints.load_latest() == ({"step": 1}, 1)


def test_a_notebook_cell_ends_once_its_saves_are_uploaded(client, monkeypatch, tmp_path):
    """After the last cell Jupyter gives a kernel 2.5 s to exit before SIGTERM: the exit flush alone lost a
    200 MiB checkpoint. The cell that saved waits for its uploads, so the last checkpoint is there."""
    nbformat = pytest.importorskip("nbformat")
    run_id = new_run(client, monkeypatch)
    notebook = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    code = f"from toolkit import checkpoints\ncheckpoints.save(bytes({3 * BIG}), 1)"
    notebook.cells = [nbformat.v4.new_code_cell(code)]
    nbformat.write(notebook, tmp_path / "last.ipynb")
    done = subprocess.run(
        [sys.executable, "-m", "papermill", str(tmp_path / "last.ipynb"), str(tmp_path / "out.ipynb")],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    sizes = {Path(a.path).name: a.file_size for a in client.list_artifacts(run_id, checkpoints.FOLDER)}
    assert sizes.get("step-0000000001.pkl", 0) > 3 * BIG and "step-0000000001.json" in sizes  # no torch there


def test_torch_checkpoints_keep_tensors_and_load_on_the_cpu(client, monkeypatch):
    torch = pytest.importorskip("torch")
    run_id = new_run(client, monkeypatch)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    checkpoints.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, 1)
    checkpoints.flush()

    assert names(client, run_id) == files(1)
    (state, step) = checkpoints.load_latest()
    restored = torch.nn.Linear(4, 3)
    restored.load_state_dict(state["model"])
    assert step == 1 and torch.equal(restored.weight, model.weight)
    assert state["optimizer"]["state"][0]["exp_avg"].device.type == "cpu"


def test_flush_raises_an_upload_that_failed(client, monkeypatch, no_client_retries):
    monkeypatch.setenv("MLFLOW_RUN_ID", "0" * 32)  # no such run
    checkpoints.save({"x": 1}, 1)
    with pytest.raises(LabError, match=r"checkpoint step 1 could not be stored in run 0{32}"):
        checkpoints.flush()
    checkpoints.flush()  # reported once


def test_outside_a_run_a_folder_or_nothing(client, monkeypatch, tmp_path):
    with pytest.warns(checkpoints.CheckpointWarning, match="checkpoints are not kept"):
        checkpoints.save({"x": 1}, 1)
    checkpoints._warned.discard("load")
    with pytest.warns(checkpoints.CheckpointWarning, match="no checkpoints to load"):
        assert checkpoints.load_latest() is None

    monkeypatch.setenv(checkpoints.DIR_ENV, str(tmp_path / "ckpt"))
    checkpoints.save({"x": 1}, 1)
    checkpoints.save({"x": 2}, 2)
    checkpoints.flush()
    assert checkpoints.load_latest() == ({"x": 2}, 2)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir())[-2:] == files(2)

    with mlflow.start_run(experiment_id=client.create_experiment("interactive")) as run:  # a run beats the folder
        checkpoints.save({"x": 3}, 3)
        assert checkpoints.load_latest() == ({"x": 3}, 3)
    assert names(client, run.info.run_id) == files(3)


def test_step_must_be_a_natural_number(client):
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(LabError, match="checkpoint step must be an int"):
            checkpoints.save({}, bad)


# -- the end-to-end test ------------------------------------------------------------------------
def test_a_kernel_killed_after_a_checkpoint_is_retried_from_that_step(lab, lab_up, tmp_path):
    space = tmp_path / "resume.yml"
    space.write_text(
        "objective: {metric: val_loss, direction: minimize}\n"
        "params:\n  x: {type: float, low: 0.0, high: 1.0}\n"
        "fixed: {steps: 5, die_after: 2}\n"
        "sampler: {name: random, seed: 7}\n"
    )
    ran = lab(
        *("dispatch", str(RESUME), "--space", str(space), "--trials", "1", "--parallel", "1", "--study", "resume"),
        *("--local", "--json", "--output", str(tmp_path / "out/{trial}-{run_id}.ipynb")),
        timeout=600,
    )
    assert ran.code == 0, ran.err
    (trial,) = json.loads(ran.out)["trials"]
    assert trial["state"] == "COMPLETE", trial["error"]
    assert trial["attempts"] == 2, "the dead kernel was run again once"

    client = mlflow.MlflowClient(lab_up)
    retry = client.get_run(trial["run_id"])
    killed = client.get_run(retry.data.tags[checkpoints.RESUMES_TAG])
    assert killed.info.status == "FAILED" and "died" in killed.data.tags["lab.error"]
    assert "step-0000000002.json" in names(client, killed.info.run_id), "flushed before the kernel died"
    assert [m.step for m in client.get_metric_history(killed.info.run_id, "total")] == [1, 2]

    assert retry.info.status == "FINISHED"
    assert retry.data.tags["resumed_at"] == "2"
    assert json.loads(retry.data.tags["resumed_state"]) == {"total": 3, "history": [1, 2]}
    history = client.get_metric_history(retry.info.run_id, "total")
    assert [(m.step, m.value) for m in history] == [(3, 6.0), (4, 10.0), (5, 15.0)], "went on from step 2's state"
    assert "step-0000000005.json" in names(client, retry.info.run_id), "the last save, uploaded before its cell ended"
