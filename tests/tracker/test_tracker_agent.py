"""The tracker agent, as the playbooks run it on a remote tracker: real SQLite DBs, the real module."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

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
    kept = sorted(p.name for p in (data / "backups").iterdir())
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
    reasons = [json.loads((p / "manifest.json").read_text())["reason"] for p in (data / "backups").iterdir()]
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
    expected = f"error: backup {made['id']}: mlflow.db does not match its sha256 (damaged); use another backup"
    assert ran.stderr.strip().splitlines() == [expected]
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
