"""Putting a verified backup in place as a tracker's DBs, and bringing MLflow's schema up to date.

Shared by the local lab (`lab up/restore --local`) and by the tracker agent on a remote tracker.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from toolkit import environment, proc
from toolkit.tracker import artifacts as tracker_artifacts
from toolkit.tracker import backups

Say = Callable[[str], None]
MLFLOW_DB = "mlflow.db"
# What would turn MLflow's Host check off (mlflow.server.security: the defaults are localhost and private addresses)
HOST_CHECK_OFF = ("MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE", "MLFLOW_SERVER_ALLOWED_HOSTS")
SIDECARS = ("-wal", "-shm", "-journal")  # what SQLite keeps beside a DB: replayed or rolled back onto it


def server_env() -> dict[str, str]:
    """The environment MLflow commands run with: the caller's allow-listed variables and the bucket's
    credentials (`toolkit.environment`), job execution off (see offline-facts), unbuffered logs. MLflow's own
    Host check (DNS rebinding: only localhost names and private IP addresses are served) stays on, whatever the
    caller's shell says."""
    env = environment.for_tracker()
    for name in HOST_CHECK_OFF:
        env.pop(name, None)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def install(tracker_dir: Path, backup: backups.Backup, say: Say, artifacts_dir: Path | None = None) -> None:
    """Put a verified backup's DBs in place (atomically, file by file) and bring the MLflow schema up to
    date; the backup itself stays as it was. With `artifacts_dir`, the artifacts the backup carries (if any)
    are merged back into it.

    The `-wal`, `-shm` and `-journal` files of each DB it replaces are removed first: SQLite would replay a
    stale WAL (or roll back a stale journal) onto the restored DB. The services are stopped by now, and the
    DBs being replaced were read through their WAL when they were kept as a pre-restore backup."""
    carried = backup.manifest.artifacts if artifacts_dir is not None else None
    label = f"backup {backup.manifest.id}"
    if carried is not None:
        tracker_artifacts.check(backup.path / carried.name, label)  # before any DB is replaced
    tracker_dir.mkdir(parents=True, exist_ok=True)
    for described in backup.manifest.files:
        staging = tracker_dir / f".restoring-{described.name}"
        with (backup.path / described.name).open("rb") as src, staging.open("wb") as dst:
            while chunk := src.read(backups.HASH_CHUNK):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        for suffix in SIDECARS:
            (tracker_dir / f"{described.name}{suffix}").unlink(missing_ok=True)
        staging.replace(tracker_dir / described.name)
    backups.fsync(tracker_dir)  # the renames
    say(f"restored backup {backup.manifest.id} ({describe(backup.manifest)})")
    if artifacts_dir is not None and carried is not None:
        put_back = tracker_artifacts.unpack(backup.path / carried.name, artifacts_dir, label)
        say(f"restored {put_back} artifact files into {artifacts_dir}")
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
