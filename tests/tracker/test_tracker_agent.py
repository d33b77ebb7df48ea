"""The tracker agent, as the playbooks run it on a remote tracker: real SQLite DBs, the real module."""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.conftest import ROOT
from toolkit.tracker import backups

OLD_DB = ROOT / "tests" / "data" / "mlflow-2.x.db"


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "toolkit.tracker.agent", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )


def tracker(data: Path) -> Path:
    (data / "tracker").mkdir(parents=True)
    shutil.copy(OLD_DB, data / "tracker" / "mlflow.db")
    with sqlite3.connect(data / "tracker" / "optuna.db") as conn:
        conn.execute("CREATE TABLE studies (id INTEGER)")
        conn.execute("INSERT INTO studies VALUES (1)")
    return data


def test_backup_rotates_and_prints_its_manifest(tmp_path):
    data = tracker(tmp_path / "srv")
    documents = []
    for _ in range(3):
        ran = agent("backup", "--data", str(data), "--keep", "2", "--days", "0", "--reason", "timer", "--json")
        assert ran.returncode == 0, ran.stderr
        documents.append(json.loads(ran.stdout))
    last = documents[-1]
    assert last["reason"] == "timer" and {f["name"] for f in last["files"]} == {"mlflow.db", "optuna.db"}
    assert all(f["integrity"] == "ok" for f in last["files"])
    kept = sorted(p.name for p in (data / "backups").iterdir() if p.is_dir())
    assert kept == sorted(d["id"] for d in documents[1:]), "rotation keeps the newest 2"
    status = json.loads(agent("status", "--data", str(data)).stdout)
    assert status["backups"] == 2 and status["newest_backup"]["id"] == last["id"]


def test_restore_if_empty_restores_and_upgrades_only_an_empty_tracker(tmp_path):
    data = tracker(tmp_path / "srv")
    made = json.loads(agent("backup", "--data", str(data), "--json").stdout)
    fresh = tmp_path / "fresh"
    ran = agent("restore-if-empty", "--data", str(fresh), "--from", made["path"])
    assert ran.returncode == 0, ran.stderr
    assert "restored backup" in ran.stderr and "upgraded the MLflow schema" in ran.stderr
    with sqlite3.connect(fresh / "tracker" / "mlflow.db") as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 3
    again = agent("restore-if-empty", "--data", str(fresh), "--from", made["path"])
    assert again.returncode == 0 and "nothing restored" in again.stderr


def test_restore_keeps_the_db_it_replaces(tmp_path):
    data = tracker(tmp_path / "srv")
    made = json.loads(agent("backup", "--data", str(data), "--json").stdout)
    ran = agent("restore", "--data", str(data), "--from", made["path"])
    assert ran.returncode == 0, ran.stderr
    reasons = [
        json.loads((p / "manifest.json").read_text())["reason"] for p in (data / "backups").iterdir() if p.is_dir()
    ]
    assert sorted(reasons) == ["manual", "pre-restore"]


def test_a_damaged_backup_is_refused_in_one_line(tmp_path):
    data = tracker(tmp_path / "srv")
    made = json.loads(agent("backup", "--data", str(data), "--json").stdout)
    copy = Path(made["path"]) / "mlflow.db"
    raw = bytearray(copy.read_bytes())
    raw[5000] ^= 0xFF
    copy.write_bytes(bytes(raw))
    ran = agent("restore-if-empty", "--data", str(tmp_path / "fresh"), "--from", made["path"])
    assert ran.returncode == 1
    damaged = f"backup {made['id']}: mlflow.db does not match its sha256 (damaged); use another backup"
    said, error = ran.stderr.strip().splitlines()
    assert said == f"passing over the controller's backup {made['id']}: {damaged}"
    assert error.startswith(f"error: no state of the tracker could be restored (1 tried; first: {said[13:]}")
    assert not (tmp_path / "fresh" / "tracker" / "mlflow.db").exists()


def test_the_trackers_environment_file_gives_credentials_without_overriding_the_caller(tmp_path, monkeypatch):
    from toolkit.tracker import agent as tracker_agent

    env_file = tmp_path / "tracker.env"
    env_file.write_text(
        "# credentials for the bucket\nGOOGLE_APPLICATION_CREDENTIALS=/srv/lab/home/key.json\n"
        "STORAGE_EMULATOR_HOST='http://10.0.0.1:9023'\nLAB_ALREADY=from-file\nnot a line\n"
    )
    monkeypatch.setenv("LAB_ALREADY", "from-caller")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    tracker_agent.load_environment(env_file)
    assert os.environ["GOOGLE_APPLICATION_CREDENTIALS"] == "/srv/lab/home/key.json"
    assert os.environ["STORAGE_EMULATOR_HOST"] == "http://10.0.0.1:9023"
    assert os.environ["LAB_ALREADY"] == "from-caller"
    tracker_agent.load_environment(tmp_path / "missing.env")  # no file: nothing to do


def artifact_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def with_artifacts(data: Path) -> dict[str, bytes]:
    """Artifacts as MLflow's proxy writes them on a tracker without a bucket: <experiment>/<run>/artifacts/..."""
    run = data / "artifacts" / "1" / "0123456789abcdef0123456789abcdef" / "artifacts"
    (run / "model").mkdir(parents=True)
    (run / "model" / "weights.bin").write_bytes(os.urandom(300_000))
    (run / "loss.png").write_bytes(os.urandom(5_000))
    (run / "notes dir").mkdir()
    (run / "notes dir" / "a note.txt").write_text("seed 7\n")
    return artifact_files(data / "artifacts")


def test_a_tracker_without_a_bucket_keeps_its_artifacts_in_its_backups(tmp_path):
    data = tracker(tmp_path / "srv")
    kept = with_artifacts(data)
    first = json.loads(agent("backup", "--data", str(data), "--json").stdout)
    assert first["artifacts"]["files"] == 3
    tar = Path(first["path"]) / "artifacts.tar"
    assert first["artifacts"]["sha256"] == backups.sha256_of(tar)
    # Nothing written since: the next backup links the same tar (no time, no space).
    second = json.loads(agent("backup", "--data", str(data), "--json").stdout)
    assert (Path(second["path"]) / "artifacts.tar").stat().st_ino == tar.stat().st_ino
    assert backups.verify(Path(second["path"])).artifacts.files == 3

    # A tracker lost with its disk: a new one restores the DBs and the artifacts, byte for byte.
    fresh = tmp_path / "fresh"
    ran = agent("restore-if-empty", "--data", str(fresh), "--from", second["path"])
    assert ran.returncode == 0, ran.stderr
    assert "restored 3 artifact files" in ran.stderr
    assert artifact_files(fresh / "artifacts") == kept
    status = json.loads(agent("status", "--data", str(data)).stdout)
    assert status["newest_backup"]["artifact_files"] == 3

    # A restore puts back what the backup holds and removes nothing written since (it belongs to no run
    # the restored DB has: an orphan, never lost data); the folder it replaced is kept as a backup too.
    run = data / "artifacts" / "1" / "0123456789abcdef0123456789abcdef" / "artifacts"
    (run / "loss.png").unlink()
    (run / "model" / "weights.bin").write_bytes(b"overwritten")
    (data / "artifacts" / "1" / "later").mkdir()
    (data / "artifacts" / "1" / "later" / "log.txt").write_text("after the backup\n")
    ran = agent("restore", "--data", str(data), "--from", first["path"])
    assert ran.returncode == 0, ran.stderr
    assert artifact_files(data / "artifacts") == {**kept, "1/later/log.txt": b"after the backup\n"}
    pre_restore = [b for b in backups.listing(data / "backups") if b.manifest.reason == "pre-restore"]
    assert [b.manifest.artifacts.files for b in pre_restore] == [3]


def test_a_backup_without_artifacts_has_no_tar(tmp_path):
    data = tracker(tmp_path / "srv")
    (data / "artifacts").mkdir()
    made = json.loads(agent("backup", "--data", str(data), "--json").stdout)
    assert "artifacts" not in json.loads((Path(made["path"]) / "manifest.json").read_text())
    assert sorted(p.name for p in Path(made["path"]).iterdir()) == ["manifest.json", "mlflow.db", "optuna.db"]


def test_an_artifacts_tar_with_an_unsafe_entry_is_refused_before_anything_is_restored(tmp_path):
    data = tracker(tmp_path / "srv")
    with_artifacts(data)
    made = json.loads(agent("backup", "--data", str(data), "--json").stdout)
    folder = Path(made["path"])
    for name, kind in (("../../escaped.txt", tarfile.REGTYPE), ("link", tarfile.SYMTYPE)):
        with tarfile.open(folder / "artifacts.tar", "w") as tar:
            entry = tarfile.TarInfo(name)
            entry.type, entry.linkname, entry.size = kind, "/etc" if kind == tarfile.SYMTYPE else "", 2
            tar.addfile(entry, io.BytesIO(b"hi") if kind == tarfile.REGTYPE else None)
        document = json.loads((folder / "manifest.json").read_text())
        document["artifacts"].update(
            size=(folder / "artifacts.tar").stat().st_size, sha256=backups.sha256_of(folder / "artifacts.tar")
        )
        (folder / "manifest.json").write_text(json.dumps(document))
        fresh = tmp_path / "fresh"
        ran = agent("restore-if-empty", "--data", str(fresh), "--from", str(folder))
        assert ran.returncode == 1
        assert ran.stderr.strip().splitlines() == [
            f"error: backup {made['id']}: artifacts.tar holds an unsafe entry {name!r}; nothing was restored; "
            "use another backup"
        ]
        assert not (fresh / "tracker" / "mlflow.db").exists()
        assert not list(tmp_path.rglob("escaped.txt"))


def test_status_rotation_and_the_timer_skip_a_malformed_manifest(tmp_path):
    data = tracker(tmp_path / "srv")
    damaged = data / "backups" / "20200101T000000.000000Z"
    damaged.mkdir(parents=True)
    document = {"id": damaged.name, "created": "yesterday", "stack": "lab", "reason": "timer", "lab_version": "0"}
    (damaged / "manifest.json").write_text(json.dumps({**document, "files": []}))  # a time that is not one
    ran = agent("backup", "--data", str(data), "--keep", "1", "--days", "0", "--reason", "timer", "--json")
    assert ran.returncode == 0, ran.stderr
    assert f"warning: skipping {damaged.name}: {damaged / 'manifest.json'} is damaged" in ran.stderr
    status = agent("status", "--data", str(data))
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["newest_backup"]["id"] == json.loads(ran.stdout)["id"]
    assert damaged.is_dir(), "what rotation cannot read, it never removes"
