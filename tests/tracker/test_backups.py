"""Backup folders: snapshots of a SQLite DB, manifests, verification, rotation."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from toolkit.errors import LabError
from toolkit.tracker import backups


def tracker_with_db(folder: Path, rows: int = 100) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(folder / "mlflow.db")
    db.execute("CREATE TABLE runs (run_uuid TEXT)")
    db.executemany("INSERT INTO runs VALUES (?)", ((f"r{i}",) for i in range(rows)))
    db.execute("CREATE TABLE alembic_version (version_num TEXT)")
    db.execute("INSERT INTO alembic_version VALUES ('abc123')")
    db.commit()
    db.close()
    return folder


def test_take_describes_and_verifies(tmp_path):
    tracker = tracker_with_db(tmp_path / "tracker")
    made = backups.take(tracker, tmp_path / "backups", stack="dev")
    (described,) = made.manifest.files
    assert described.counts == {"runs": 100}
    assert described.schema_revision == "abc123"
    assert described.integrity == "ok"
    assert described.sha256 == backups.sha256_of(made.path / "mlflow.db")
    assert backups.verify(made.path) == made.manifest
    assert backups.read_manifest(made.path) == made.manifest


def test_optuna_db_is_backed_up_alongside(tmp_path):
    tracker = tracker_with_db(tmp_path / "tracker")
    db = sqlite3.connect(tracker / "optuna.db")
    db.execute("CREATE TABLE studies (id INTEGER)")
    db.execute("CREATE TABLE trials (id INTEGER)")
    db.executemany("INSERT INTO trials VALUES (?)", [(1,), (2,)])
    db.commit()
    db.close()
    made = backups.take(tracker, tmp_path / "backups", stack="dev")
    assert [f.name for f in made.manifest.files] == ["mlflow.db", "optuna.db"]
    assert made.manifest.files[1].counts == {"studies": 0, "trials": 2}


def test_no_tracker_db_is_a_clear_error(tmp_path):
    with pytest.raises(LabError, match="there is no tracker DB"):
        backups.take(tmp_path, tmp_path / "backups", stack="dev")


def fake_backup(folder: Path, created: dt.datetime) -> None:
    backup_id = backups.new_id(created)
    path = folder / backup_id
    path.mkdir(parents=True)
    manifest = backups.Manifest(
        id=backup_id, created=created.isoformat(), stack="dev", reason="timer", lab_version="test", files=()
    )
    (path / backups.MANIFEST).write_text(manifest.to_json())


def test_rotation_keeps_the_newest_and_one_a_day(tmp_path):
    now = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.timezone.utc)
    made = [now - dt.timedelta(days=d, hours=h) for d in range(30) for h in (1, 9, 17)]
    for created in made:
        fake_backup(tmp_path, created)
    removed = backups.rotate(tmp_path, keep_last=5, keep_days=7, now=now)
    kept = {b.manifest.created_at for b in backups.listing(tmp_path)}
    newest = sorted(made, reverse=True)
    recent = [c for c in newest if (now - c).days < 7]
    newest_of_each_day = {max(c for c in recent if c.date() == day) for day in {c.date() for c in recent}}
    assert kept == set(newest[:5]) | newest_of_each_day
    assert len(removed) == 90 - len(kept)
    assert 8 <= len(kept) < 20


def test_find_by_prefix_and_listing_ignores_incomplete(tmp_path):
    tracker = tracker_with_db(tmp_path / "tracker")
    first = backups.take(tracker, tmp_path / "backups", stack="dev")
    (tmp_path / "backups" / ".incoming-x").mkdir()
    (tmp_path / "backups" / "no-manifest").mkdir()
    assert [b.manifest.id for b in backups.listing(tmp_path / "backups")] == [first.manifest.id]
    assert backups.find(tmp_path / "backups", first.manifest.id[:10]).path == first.path
    with pytest.raises(LabError, match="no backup 'zzz'"):
        backups.find(tmp_path / "backups", "zzz")


def test_snapshot_reports_progress(tmp_path):
    tracker = tracker_with_db(tmp_path / "tracker", rows=300_000)
    seen: list[tuple[int, int]] = []
    backups.snapshot(tracker / "mlflow.db", tmp_path / "copy.db", lambda done, total: seen.append((done, total)))
    assert seen[-1][0] == seen[-1][1] > 0
    assert len(seen) > 2
