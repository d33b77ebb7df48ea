"""Putting a verified backup in place as a tracker's DBs, and bringing MLflow's schema up to date.

Shared by the local lab (`lab up/restore --local`) and by the tracker agent on a remote tracker.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from toolkit import environment, proc
from toolkit.tracker import backups

Say = Callable[[str], None]
MLFLOW_DB = "mlflow.db"


def server_env() -> dict[str, str]:
    """The environment MLflow commands run with: the caller's allow-listed variables and the bucket's
    credentials (`toolkit.environment`), job execution off (see offline-facts), unbuffered logs."""
    env = environment.for_tracker()
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def install(tracker_dir: Path, backup: backups.Backup, say: Say) -> None:
    """Put a verified backup's DBs in place (atomically, file by file) and bring the MLflow schema up to
    date; the backup itself stays as it was."""
    tracker_dir.mkdir(parents=True, exist_ok=True)
    for described in backup.manifest.files:
        staging = tracker_dir / f".restoring-{described.name}"
        with (backup.path / described.name).open("rb") as src, staging.open("wb") as dst:
            while chunk := src.read(backups.HASH_CHUNK):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        staging.replace(tracker_dir / described.name)
    say(f"restored backup {backup.manifest.id} ({describe(backup.manifest)})")
    if (tracker_dir / MLFLOW_DB).exists():
        upgrade_schema(tracker_dir / MLFLOW_DB, backup.manifest, say)


def upgrade_schema(db: Path, manifest: backups.Manifest, say: Say) -> None:
    """`mlflow db upgrade` on a restored DB: a no-op when the schema is current."""
    proc.run([sys.executable, "-m", "mlflow", "db", "upgrade", f"sqlite:///{db}"], timeout=600, env=server_env())
    before = manifest.mlflow.schema_revision if manifest.mlflow else None
    after = backups.inspect(db, MLFLOW_DB).schema_revision
    if before != after:
        say(f"upgraded the MLflow schema from {before} to {after} (the backup keeps the original)")


def describe(manifest: backups.Manifest) -> str:
    counts = manifest.mlflow.counts if manifest.mlflow else {}
    parts = [f"{counts[k]} {k}" for k in ("experiments", "runs", "metrics") if k in counts]
    return ", ".join(parts) or f"{manifest.size} bytes"
