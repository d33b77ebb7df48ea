"""Backups taken in a loop while several clients log: nothing acknowledged before a backup is missing."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from tests.labs.local.conftest import up_args

mlflow = pytest.importorskip("mlflow")

pytestmark = pytest.mark.slow  # starts labs or services: not in `pytest -m 'not slow'`

WRITERS = 4
BACKUPS = 4


def test_every_acknowledged_write_is_in_the_next_backup(lab, ports, state, tmp_path):
    assert lab(*up_args(ports)).code == 0
    uri = f"http://127.0.0.1:{ports['mlflow']}"
    experiment = mlflow.MlflowClient(uri).create_experiment("load")
    acked: list[tuple[str, str, int]] = []  # (run id, metric key or "", step), in acknowledgement order
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        tracking = mlflow.MlflowClient(uri)
        artifact = tmp_path / f"artifact-{index}.txt"
        artifact.write_text(f"writer {index}\n")
        try:
            while not stop.is_set():
                run_id = tracking.create_run(experiment, tags={"writer": str(index)}).info.run_id
                tracking.log_artifact(run_id, str(artifact))
                with lock:
                    acked.append((run_id, "", -1))
                for step in range(3):
                    tracking.log_metric(run_id, "loss", 1.0 / (step + 1), step=step)
                    with lock:
                        acked.append((run_id, "loss", step))
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    taken: list[tuple[int, Path]] = []
    try:
        for _ in range(BACKUPS):
            with lock:
                before = len(acked)
            ran = lab("backup", "--local", "--json")
            assert ran.code == 0, ran.err
            taken.append((before, Path(json.loads(ran.out)["path"])))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors, errors
    assert taken[-1][0] > 20, "the writers barely wrote: the test proves little"

    for before, folder in taken:
        db = sqlite3.connect(folder / "mlflow.db")
        runs = {r[0] for r in db.execute("SELECT run_uuid FROM runs")}
        metrics = set(db.execute("SELECT run_uuid, key, step FROM metrics"))
        db.close()
        for run_id, key, step in acked[:before]:
            if key:
                assert (run_id, key, step) in metrics, f"metric {key}@{step} of {run_id} missing from {folder.name}"
            else:
                assert run_id in runs, f"run {run_id} missing from {folder.name}"

    # After down (which backs up) and up from that backup, every run is there, artifacts included.
    assert lab("down", "--local").code == 0
    (state / "tracker" / "mlflow.db").unlink()
    assert lab(*up_args(ports)).code == 0
    tracking = mlflow.MlflowClient(uri)
    all_runs = {run_id for run_id, key, _ in acked if not key}
    found = tracking.search_runs([experiment], max_results=5000)
    assert {r.info.run_id for r in found} >= all_runs
    for run_id in list(all_runs)[:5]:
        assert [a.path for a in tracking.list_artifacts(run_id)] == [
            next(f"artifact-{r.data.tags['writer']}.txt" for r in found if r.info.run_id == run_id)
        ]
    assert lab("down", "--local").code == 0
