"""Installing a backup as the tracker's DB: what SQLite keeps beside the DB it replaces must not come back.

The stale files are made by real SQLite: a WAL that still holds committed rows (a tracker killed before its
checkpoint), and a hot rollback journal (a transaction killed half way). SQLite replays the one and rolls back
the other onto whatever DB file it finds next to them."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from toolkit.tracker import backups
from toolkit.tracker import db as tracker_db

DB = "optuna.db"  # a tracker DB that needs no `mlflow db upgrade` after the install


def rows(path: Path) -> list[tuple[str, ...]]:
    """The DB's rows, read as the tracker would: whatever lies beside the file is replayed first."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return conn.execute("SELECT * FROM trials ORDER BY rowid").fetchall()
    finally:
        conn.close()


def tracker_in(folder: Path, mode: str, labels: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(folder / DB) as conn:
        conn.execute(f"PRAGMA journal_mode = {mode}")
        conn.execute("CREATE TABLE trials (label TEXT)")
        conn.executemany("INSERT INTO trials VALUES (?)", [(label,) for label in labels])
    return folder


def test_a_stale_wal_is_not_replayed_onto_the_restored_db(tmp_path):
    tracker = tracker_in(tmp_path / "tracker", "wal", [f"kept-{i}" for i in range(5)])
    made = backups.take(tracker, tmp_path / "backups", stack="dev")
    # The tracker writes on, and dies before SQLite checkpoints: its rows are in the WAL only.
    conn = sqlite3.connect(tracker / DB)
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.executemany("INSERT INTO trials VALUES (?)", [(f"after-{i}",) for i in range(7)])
    conn.commit()
    shutil.copy(tracker / f"{DB}-wal", tmp_path / "stale-wal")  # as a kill -9 would leave it
    conn.close()
    shutil.copy(tmp_path / "stale-wal", tracker / f"{DB}-wal")

    tracker_db.install(tracker, made, lambda _: None)
    assert backups.sha256_of(tracker / DB) == made.manifest.files[0].sha256
    assert rows(tracker / DB) == [(f"kept-{i}",) for i in range(5)]
    assert not (tracker / f"{DB}-wal").exists() or (tracker / f"{DB}-wal").stat().st_size == 0


HALF_A_TRANSACTION = textwrap.dedent(
    """
    import os, sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("PRAGMA cache_size = 2")  # spill changed pages to the DB file before the commit
    conn.execute("BEGIN")
    conn.execute("UPDATE trials SET label = 'half-' || rowid")
    os._exit(0)  # killed in the middle: the journal is hot
    """
)


def test_a_hot_journal_is_not_rolled_back_onto_the_restored_db(tmp_path):
    labels = [f"kept-{i:05d}" * 10 for i in range(3000)]
    tracker = tracker_in(tmp_path / "tracker", "delete", labels)
    made = backups.take(tracker, tmp_path / "backups", stack="dev")
    # The tracker's DB changes after the backup, then a transaction dies half way.
    with sqlite3.connect(tracker / DB) as conn:
        conn.execute("UPDATE trials SET label = 'later'")
    subprocess.run([sys.executable, "-c", HALF_A_TRANSACTION, str(tracker / DB)], check=True)
    journal = tracker / f"{DB}-journal"
    assert journal.stat().st_size > 0

    tracker_db.install(tracker, made, lambda _: None)
    assert rows(tracker / DB) == [(label,) for label in labels]
    assert not journal.exists()
