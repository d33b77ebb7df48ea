"""Bad input and faults: damaged backups, a missing or read-only LAB_HOME, a full disk, a killed backup,
a stale PID, a port in use, a restore while the tracker runs, a backup from an older MLflow."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import LAB
from tests.labs.local.conftest import DATA, up_args
from toolkit.errors import EXIT_BACKUP_FAILED
from toolkit.tracker import backups

pytestmark = pytest.mark.slow  # starts labs or services: not in `pytest -m 'not slow'`


def backup_id(lab) -> str:
    ran = lab("backup", "--local", "--json")
    assert ran.code == 0, ran.err
    return json.loads(ran.out)["id"]


def sha(path: Path) -> str:
    return backups.sha256_of(path)


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:4096])


def wrong_checksum(path: Path) -> None:
    manifest = path.parent / "manifest.json"
    document = json.loads(manifest.read_text())
    document["files"][0]["sha256"] = "0" * 64
    manifest.write_text(json.dumps(document))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (flip_bytes, "does not match its sha256 (damaged)"),
        (truncate, "its manifest says"),
        (wrong_checksum, "does not match its sha256 (damaged)"),
    ],
)
def test_damaged_backup_is_refused_and_nothing_is_touched(lab, tracker, state, damage, message):
    chosen = backup_id(lab)
    damage(state / "backups" / chosen / "mlflow.db")
    before = sha(tracker / "mlflow.db")
    ran = lab("restore", chosen, "--local")
    assert ran.code == 1
    assert ran.err.startswith(f"error: backup {chosen}")
    assert message in ran.err
    assert len(ran.err.strip().splitlines()) == 1
    assert sha(tracker / "mlflow.db") == before
    assert [b.manifest.id for b in backups.listing(state / "backups")] == [chosen], "no pre-restore backup"


def test_backup_that_is_consistent_but_not_a_database_is_refused(lab, tracker, state):
    chosen = backup_id(lab)
    copy = state / "backups" / chosen / "mlflow.db"
    flip_bytes(copy)
    manifest = copy.parent / "manifest.json"
    document = json.loads(manifest.read_text())
    document["files"][0]["sha256"] = sha(copy)  # a manifest that agrees with the damage
    manifest.write_text(json.dumps(document))
    ran = lab("restore", chosen, "--local")
    assert ran.code == 1
    assert "integrity check" in ran.err or "not a readable SQLite DB" in ran.err


def test_up_skips_a_damaged_backup_for_an_older_good_one(lab, tracker, state, ports):
    good = backup_id(lab)
    time.sleep(0.01)
    bad = backup_id(lab)
    flip_bytes(state / "backups" / bad / "mlflow.db")
    (tracker / "mlflow.db").unlink()
    ran = lab(*up_args(ports))
    assert ran.code == 0, ran.err
    assert f"skipping backup {bad}" in ran.err
    assert f"restored backup {good}" in ran.err
    assert lab("down", "--local").code == 0


def test_missing_lab_home(lab, tmp_path):
    ran = lab("status", "--local", env={"LAB_HOME": str(tmp_path / "not-mounted")})
    assert ran.code == 1
    assert ran.err.strip() == (
        f"error: LAB_HOME={tmp_path / 'not-mounted'} does not exist (is its disk mounted?); "
        f"create it with `mkdir -p {tmp_path / 'not-mounted'}` or fix LAB_HOME"
    )


@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"needs to mount a tmpfs (root): {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_read_only_lab_home(lab, tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as folder:
        ran = lab("status", "--local", env={"LAB_HOME": str(folder)})
    assert ran.code == 1
    assert f"error: LAB_HOME={folder} is not writable (Read-only file system)" in ran.err


def test_disk_full_during_a_backup_keeps_the_earlier_ones(lab, tracker, state):
    size = (tracker / "mlflow.db").stat().st_size
    with tmpfs(state / "backups", f"size={int(size * 2.5) // 4096 * 4096 + 8192}"):
        first, second = backup_id(lab), backup_id(lab)
        ran = lab("backup", "--local")
        assert ran.code == 1
        assert "the backup could not be written" in ran.err
        assert "No space left on device" in ran.err or "database or disk is full" in ran.err
        assert "the earlier backups are untouched" in ran.err
        for kept in (first, second):
            backups.verify(state / "backups" / kept)
        assert [b.manifest.id for b in backups.listing(state / "backups")] == [second, first]
        assert not list((state / "backups").glob(".incoming-*"))


def test_killed_backup_leaves_nothing_that_looks_valid(lab, state):
    tracker = state / "tracker"
    tracker.mkdir(parents=True)
    db = sqlite3.connect(tracker / "mlflow.db")
    db.execute("CREATE TABLE metrics (key TEXT, value REAL, step INTEGER)")
    db.executemany("INSERT INTO metrics VALUES (?, ?, ?)", ((f"k{i % 97}" * 20, i * 0.5, i) for i in range(2_000_000)))
    db.commit()
    db.close()
    process = subprocess.Popen([str(LAB), "backup", "--local"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list((state / "backups").glob(".incoming-*/mlflow.db")):
        assert process.poll() is None, "the backup finished before it could be killed: make the DB bigger"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert backups.listing(state / "backups") == []
    status = json.loads(lab("status", "--local", "--json").out)
    assert status["backups"]["latest"] is None
    assert lab("restore", "--local").code == 1
    # The next backup clears what the killed one left and succeeds.
    assert lab("backup", "--local").code == 0
    assert len(backups.listing(state / "backups")) == 1
    assert not list((state / "backups").glob(".incoming-*"))


def test_stale_pid_is_cleaned_up(lab, state, ports, tracker):
    gone = subprocess.Popen(["true"])
    gone.wait()
    run_dir = state / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "mlflow.json").write_text(
        json.dumps(
            {
                "name": "mlflow",
                "pid": gone.pid,
                "create_time": 1.0,
                "port": 1,
                "url": "http://127.0.0.1:1",
                "health_url": "http://127.0.0.1:1/health",
                "log": "x",
                "started": "2026-01-01T00:00:00+00:00",
            }
        )
    )
    status = json.loads(lab("status", "--local", "--json").out)
    assert status["components"]["mlflow"]["state"] == "stopped"
    assert not (run_dir / "mlflow.json").exists()
    (run_dir / "mlflow.json").write_text(
        json.dumps(
            {
                "name": "mlflow",
                "pid": os.getpid(),
                "create_time": 1.0,
                "port": 1,
                "url": "http://127.0.0.1:1",
                "health_url": "http://127.0.0.1:1/health",
                "log": "x",
                "started": "2026-01-01T00:00:00+00:00",
            }
        )
    )
    ran = lab(*up_args(ports))  # a live but recycled PID
    assert ran.code == 0, ran.err
    assert f"cleaned up a stale record (pid {os.getpid()} no longer runs)" in ran.err
    assert lab("down", "--local").code == 0


def test_port_in_use_names_the_holder(lab, tracker, ports):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", int(ports["mlflow"])))
        holder.listen()
        ran = lab(*up_args(ports))
    assert ran.code == 1
    assert f"error: port {ports['mlflow']} (for mlflow) is in use by " in ran.err
    assert f"(pid {os.getpid()}: " in ran.err
    assert "choose another port with --port" in ran.err


def test_restore_while_running_needs_stop_and_keeps_the_replaced_db(lab, tracker, state, ports):
    chosen = backup_id(lab)
    assert lab(*up_args(ports)).code == 0
    ran = lab("restore", chosen, "--local")
    assert ran.code == 1
    assert ran.err.strip().splitlines()[-1] == (
        "error: the tracker is running; pass --stop to stop it first, or `lab down --local`"
    )
    ran = lab("restore", chosen, "--local", "--stop")
    assert ran.code == 0, ran.err
    assert "mlflow stopped" in ran.err
    kept = [b for b in backups.listing(state / "backups") if b.manifest.reason == "pre-restore"]
    assert len(kept) == 1
    assert kept[0].manifest.files[0].counts["runs"] == 3
    assert json.loads(lab("status", "--local", "--json").out)["components"]["mlflow"]["state"] == "stopped"


def test_backup_from_an_older_mlflow_is_upgraded_and_kept(lab, state, ports):
    old = state / "old"
    old.mkdir(parents=True)
    shutil.copy(DATA / "mlflow-2.x.db", old / "mlflow.db")
    made = backups.take(old, state / "backups", stack="dev", reason="manual")
    assert made.manifest.mlflow.schema_revision == "4465047574b1"
    before = sha(made.path / "mlflow.db")
    ran = lab(*up_args(ports))
    assert ran.code == 0, ran.err
    assert f"restored backup {made.manifest.id}" in ran.err
    assert "upgraded the MLflow schema from 4465047574b1 to " in ran.err
    assert sha(made.path / "mlflow.db") == before, "the original backup must stay as it was"
    mlflow = pytest.importorskip("mlflow")
    runs = mlflow.MlflowClient(f"http://127.0.0.1:{ports['mlflow']}").search_runs(["1"])
    assert sorted(r.data.tags["origin"] for r in runs) == ["mlflow-2.x"] * 3
    assert lab("down", "--local").code == 0


def test_down_with_a_failing_backup_stops_nothing(lab, tracker, state, ports):
    assert lab(*up_args(ports)).code == 0
    (state / "backups").mkdir(exist_ok=True)
    blocker = state / "backups"
    shutil.rmtree(blocker)
    blocker.write_text("not a folder")  # backups cannot be written
    ran = lab("down", "--local")
    assert ran.code == EXIT_BACKUP_FAILED, "a failed backup has its own exit code, as on gcp (README: exit codes)"
    # down stopped MLflow's writes, then the backup failed: it says so last, after MLflow is answering again
    said = ran.err.strip().splitlines()
    assert said[-1].startswith("error: the backup failed, so nothing was stopped (MLflow is running again)"), said
    assert "mlflow stopped" in said[0] and any(line.startswith("mlflow answered") for line in said), said
    assert json.loads(lab("status", "--local", "--json").out)["components"]["mlflow"]["state"] == "running"
    ran = lab("down", "--local", "--force")
    assert ran.code == 0, ran.err
    assert "stopping without a backup (--force)" in ran.err
