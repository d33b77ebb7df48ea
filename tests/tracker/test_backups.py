"""Backup folders: snapshots of a SQLite DB, manifests, verification, rotation."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import subprocess
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


def fake_backup(folder: Path, created: dt.datetime, reason: str = "timer") -> None:
    backup_id = backups.new_id(created)
    path = folder / backup_id
    path.mkdir(parents=True)
    manifest = backups.Manifest(
        id=backup_id, created=created.isoformat(), stack="dev", reason=reason, lab_version="test", files=()
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


def test_rotation_keeps_what_restores_replaced_for_the_period(tmp_path):
    """A restore keeps the DBs it replaced (reason pre-restore): they may be the only copy of the runs it undid,
    so a busy hourly timer must not rotate them out by count; they go when older than keep_days."""
    now = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.timezone.utc)
    replaced = [now - dt.timedelta(days=2), now - dt.timedelta(days=2, hours=1), now - dt.timedelta(days=9)]
    for created in replaced:
        fake_backup(tmp_path, created, reason="pre-restore")
    for hour in range(1, 40):  # the hourly timer since
        fake_backup(tmp_path, now - dt.timedelta(hours=hour))
    backups.rotate(tmp_path, keep_last=5, keep_days=7, now=now)
    kept = {b.manifest.created_at for b in backups.listing(tmp_path) if b.manifest.reason == "pre-restore"}
    assert kept == set(replaced[:2])


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


def write_manifest(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True)
    (folder / backups.MANIFEST).write_text(text)
    return folder


def forged(backup_id: str, created: str | None = None) -> str:
    """A manifest with no files, as a crafted folder or object would hold it; dated by its id if it is one."""
    if created is None:
        try:
            created = dt.datetime.strptime(backup_id, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=dt.timezone.utc).isoformat()
        except ValueError:
            created = "9999-12-31T23:59:59.999999+00:00"
    return json.dumps(
        {"id": backup_id, "created": created, "stack": "dev", "reason": "manual", "lab_version": "x", "files": []}
    )


def test_ids_that_are_not_timestamps_never_become_the_newest(tmp_path, capsys):
    folder = tmp_path / "backups"
    real = backups.take(tracker_with_db(tmp_path / "tracker"), folder, stack="dev")
    for name in ("99999999T999999.999999Z-evil", "zzz", "99999999T999999.999999Z", "29991231T235959.999999Z"):
        write_manifest(folder / name, forged(name))
    # A valid id whose manifest is another backup's, or dated otherwise than its id.
    write_manifest(folder / "20200101T000000.000001Z", forged("20200101T000000.000002Z"))
    write_manifest(folder / "20200101T000000.000003Z", forged("20200101T000000.000003Z", "2020-01-01T00:00:00+00:00"))
    assert [b.manifest.id for b in backups.listing(folder)] == [real.manifest.id]
    assert backups.find(folder, "2").path == real.path
    warned = capsys.readouterr().err
    assert "zzz: its name is not a backup id" in warned
    assert "29991231T235959.999999Z: it is dated in the future" in warned
    assert "its manifest is that of backup" in warned and "is not the time of id" in warned
    assert backups.valid_id(real.manifest.id)
    assert not any(backups.valid_id(n) for n in ("99999999T999999.999999Z", "20260230T000000.000000Z", "../x", ""))


MALFORMED = {
    "not json": "{",
    "a list": "[]",
    "null": "null",
    "no files": json.dumps({"id": "I", "created": "C", "stack": "dev", "reason": "x", "lab_version": "x"}),
    "files not a list": "files=7",
    "created is a number": "created=5",
    "created is not a time": "created='garbage'",
    "a file outside": "files=[{'name': '../../../.bashrc', 'size': 1, 'sha256': 'a' * 64, 'integrity': 'ok'}]",
    "a size that is text": "files=[{'name': 'mlflow.db', 'size': 'big', 'sha256': 'a' * 64, 'integrity': 'ok'}]",
    "binary": "\udcff",
}


def malformed_manifest(backup_id: str, created: str, how: str) -> str:
    text = MALFORMED[how]
    if "=" not in text or text.startswith("{"):
        return text.replace('"I"', f'"{backup_id}"').replace('"C"', f'"{created}"')
    key, _, value = text.partition("=")
    document = json.loads(forged(backup_id, created))
    document[key] = eval(value)  # noqa: S307 -- the test's own table
    return json.dumps(document)


def test_malformed_manifests_are_skipped_with_a_warning_by_listing_and_rotation(tmp_path, capsys):
    folder = tmp_path / "backups"
    good = backups.take(tracker_with_db(tmp_path / "tracker"), folder, stack="dev")
    start = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    bad = []
    for offset, how in enumerate(MALFORMED):
        created = start + dt.timedelta(seconds=offset)
        path = folder / backups.new_id(created)
        path.mkdir()
        (path / backups.MANIFEST).write_bytes(
            malformed_manifest(path.name, created.isoformat(), how).encode(errors="surrogateescape")
        )
        bad.append(path)
    assert [b.path for b in backups.listing(folder)] == [good.path]
    assert backups.rotate(folder, keep_last=0, keep_days=0) == [good.path]
    assert all(p.is_dir() for p in bad), "rotation never removes what it cannot read"
    warned = capsys.readouterr().err.splitlines()
    assert len([w for w in warned if w.startswith("warning: skipping")]) == len(MALFORMED)
    with pytest.raises(LabError, match="is damaged"):
        backups.verify(bad[list(MALFORMED).index("a file outside")])


def test_an_old_manifest_without_the_check_field_still_reads(tmp_path):
    made = backups.take(tracker_with_db(tmp_path / "tracker"), tmp_path / "backups", stack="dev")
    document = json.loads((made.path / backups.MANIFEST).read_text())
    assert document["files"][0]["check"] == "quick_check"
    del document["files"][0]["check"]
    (made.path / backups.MANIFEST).write_text(json.dumps(document))
    assert backups.verify(made.path).files[0].check == "integrity_check"


def test_a_snapshot_runs_the_quick_check_and_a_restore_the_full_one(tmp_path):
    """An index that no longer matches its table: quick_check does not look, integrity_check does."""
    tracker = tracker_with_db(tmp_path / "tracker")
    with sqlite3.connect(tracker / "mlflow.db") as conn:
        conn.execute("ALTER TABLE runs ADD COLUMN other TEXT")
        conn.execute("UPDATE runs SET other = 'o' || rowid")
        conn.execute("CREATE INDEX runs_by_uuid ON runs (run_uuid)")
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute("UPDATE sqlite_master SET sql = replace(sql, '(run_uuid)', '(other)') WHERE name = 'runs_by_uuid'")
    made = backups.take(tracker, tmp_path / "backups", stack="dev")
    (described,) = made.manifest.files
    assert (described.check, described.integrity) == ("quick_check", "ok")
    assert backups.verify(made.path, backups.QUICK_CHECK) == made.manifest
    with pytest.raises(LabError, match=r"mlflow\.db fails its integrity check"):
        backups.verify(made.path)


def test_only_incoming_folders_whose_process_is_gone_are_cleared(tmp_path):
    folder = tmp_path / "backups"
    gone = subprocess.Popen(["true"])
    gone.wait()
    alive = subprocess.Popen(["sleep", "60"])
    try:
        stale = folder / f".incoming-20260101T000000.000000Z-{gone.pid}"
        legacy = folder / ".incoming-20260101T000000.000001Z"
        running = folder / f".incoming-20260101T000000.000002Z-{alive.pid}"
        for path in (stale, legacy, running):
            (path / "mlflow.db").parent.mkdir(parents=True)
            (path / "mlflow.db").write_bytes(b"part of a snapshot")
        backups.take(tracker_with_db(tmp_path / "tracker"), folder, stack="dev")
        assert not stale.exists() and not legacy.exists()
        assert (running / "mlflow.db").read_bytes() == b"part of a snapshot"
    finally:
        alive.kill()
        alive.wait()
