"""A tracker without a DB comes back from the newest state there is, never silently from an older one.

Run on the tracker (the agent's `restore-if-empty`, before MLflow's first start). The candidates, each dated by
the tracker's own clock:
- the replica's newest position (Litestream, `lab:replica`): the time of its newest transaction;
- the backups in the tracker's own backups folder (the hourly timer's, the one taken as it last stopped);
- a backup the controller sent (its newest verified one, copied by `lab up`);
- the newest complete backup in the bucket (a `lab down` run elsewhere, by a scheduled job, leaves it there).
A backup a restore took of the DBs it replaced (reason `pre-restore`) is no candidate: it holds what a person
chose to undo.

They are tried newest first. One that cannot be fetched or does not verify (the full integrity check) is skipped,
and that is said and recorded; the next is tried. What was restored, from where, from when and what was passed
over is written to `<data>/restored.json` (`agent status` shows it, `lab up` says it). Only when there is no
candidate at all is a fresh, empty MLflow DB created; candidates that all fail are an error, never an empty
tracker.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from toolkit import proc
from toolkit.console import age
from toolkit.errors import LabError
from toolkit.tracker import backups
from toolkit.tracker import db as tracker_db

Say = Callable[[str], None]
RECORD = "restored.json"
STAGING = ".from-replica"
UNDONE = "pre-restore"  # a restore's copy of what it replaced: never restored on its own
EMPTY = "empty"  # the record's source when nothing existed to restore
# Litestream dates a replica's files to the second; its newest state may be up to this much newer than that.
REPLICA_RESOLUTION = dt.timedelta(seconds=1)


@dataclass(frozen=True)
class Candidate:
    """One state the tracker could come back from. `fetch` brings it into the tracker's backups folder as a
    backup (None when there turns out to be nothing); `rank` orders the candidates, newest first."""

    source: str  # replica, tracker, controller, bucket
    label: str
    at: dt.datetime
    fetch: Callable[[], backups.Backup | None]
    backup_id: str = ""

    @property
    def rank(self) -> dt.datetime:
        return self.at + REPLICA_RESOLUTION if self.source == "replica" else self.at


@dataclass(frozen=True)
class Restored:
    """What `recover` did: the source, the backup installed and when its state was written."""

    source: str
    label: str
    backup: str
    state_at: str
    restored_at: str
    age_s: float
    passed_over: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"


def replica_snapshot(
    replica_url: str, env: dict[str, str], data: Path, *, stack: str, at: dt.datetime | None = None
) -> backups.Backup | None:
    """The replica's DBs (newest, or as they were at `at`) as a checked backup in `<data>/backups` (reason
    `replica`); None when the replica holds no MLflow DB (then)."""
    from toolkit.tracker import replica

    staging = data / "restore" / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if not replica.restore(replica_url, replica.DBS[0], staging / replica.DBS[0], env, at):
            return None
        for name in replica.DBS[1:]:
            replica.restore(replica_url, name, staging / name, env, at)
        return backups.take(staging, data / "backups", stack=stack, reason="replica")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _verified(backup: backups.Backup) -> backups.Backup:
    return backups.Backup(backup.path, backups.verify(backup.path))


def from_folder(folder: Path, source: str, label: str) -> Candidate | None:
    """A backup folder (the controller's, sent) as a candidate; None when it is a pre-restore copy. One whose
    manifest does not read is tried last, and fails out loud."""
    try:
        manifest = backups.read_manifest(folder)
    except LabError as exc:
        unreadable = exc

        def fail() -> backups.Backup:
            raise unreadable

        return Candidate(source, f"{label} {folder.name}", dt.datetime.min.replace(tzinfo=dt.timezone.utc), fail)
    if manifest.reason == UNDONE:
        return None
    return Candidate(
        source, f"{label} {manifest.id}", manifest.created_at, lambda: backups.Backup(folder, manifest), manifest.id
    )


def from_tracker(backups_dir: Path) -> list[Candidate]:
    return [
        Candidate("tracker", f"the tracker's backup {b.manifest.id}", b.manifest.created_at, _given(b), b.manifest.id)
        for b in backups.listing(backups_dir)
        if b.manifest.reason != UNDONE
    ]


def _given(backup: backups.Backup) -> Callable[[], backups.Backup]:
    return lambda: backup


def from_bucket(bucket: str, stack: str, backups_dir: Path, say: Say) -> list[Candidate]:
    """The bucket's newest complete backup of the stack that is not a pre-restore copy (none when the bucket
    cannot be read: that is said, and the other candidates still count)."""
    from toolkit.tracker import gcs

    try:
        manifest = _newest_in_bucket(bucket, stack, say)
    except LabError as exc:
        say(f"could not look in gs://{bucket}: {exc.one_line()}")
        return []
    if manifest is None:
        return []

    def fetch() -> backups.Backup:
        return gcs.download(bucket, stack, backups_dir, backup_id=manifest.id)

    return [Candidate("bucket", f"backup {manifest.id} in gs://{bucket}", manifest.created_at, fetch, manifest.id)]


def _newest_in_bucket(bucket: str, stack: str, say: Say) -> backups.Manifest | None:
    from toolkit.tracker import gcs

    for backup_id in gcs.complete_ids(bucket, stack):
        try:
            manifest = gcs.manifest_of(bucket, stack, backup_id)
        except gcs.DamagedManifest as exc:
            say(f"skipping it: {exc.one_line()}")
            continue
        if manifest.reason != UNDONE:
            return manifest
    return None


def from_replica(replica_url: str, env: dict[str, str], data: Path, stack: str, say: Say) -> list[Candidate]:
    from toolkit.tracker import replica

    try:
        newest = replica.newest(replica_url, env)
    except LabError as exc:
        say(f"could not read the replica: {exc.one_line()}")
        return []
    if newest is None:
        return []
    return [
        Candidate(
            "replica",
            f"the replica {replica_url} (transaction {newest.txid})",
            newest.at,
            lambda: replica_snapshot(replica_url, env, data, stack=stack),
        )
    ]


def ordered(candidates: list[Candidate]) -> list[Candidate]:
    """Newest first; one backup offered by two sources (the tracker's own, the controller's copy) once."""
    seen: set[str] = set()
    unique = []
    for candidate in sorted(candidates, key=lambda c: c.rank, reverse=True):
        if candidate.backup_id and candidate.backup_id in seen:
            continue
        seen.add(candidate.backup_id)
        unique.append(candidate)
    return unique


def recover(data: Path, candidates: list[Candidate], say: Say, *, tracker: str, artifacts: Path) -> Restored | None:
    """Install the newest candidate that verifies into `<data>/<tracker>`; record and return what it was. With no
    candidate at all, a fresh MLflow DB (recorded with source `empty`; None). Candidates that all fail are a
    LabError: the tracker is not started empty while a state exists that could not be had."""
    passed_over: list[str] = []
    for candidate in ordered(candidates):
        try:
            fetched = candidate.fetch()
            if fetched is None:
                continue
            chosen = _verified(fetched)
        except LabError as exc:
            say(f"passing over {candidate.label}: {exc.one_line()}")
            passed_over.append(f"{candidate.label}: {exc.one_line()}")
            continue
        tracker_db.install(data / tracker, chosen, say, artifacts_dir=artifacts)
        now = backups.now_utc()
        done = Restored(
            source=candidate.source,
            label=candidate.label,
            backup=chosen.manifest.id,
            state_at=candidate.at.isoformat(),
            restored_at=now.isoformat(),
            age_s=round((now - candidate.at).total_seconds(), 1),
            passed_over=tuple(passed_over),
        )
        newer = [c.label for c in ordered(candidates) if c.rank > candidate.rank and c is not candidate]
        older = "; every other state is older" if not newer else f"; newer but unusable: {', '.join(newer)}"
        say(f"restored {candidate.label}, the newest state there is ({age(done.age_s)} old){older}")
        write_record(data, done)
        return done
    if passed_over:
        raise LabError(
            f"no state of the tracker could be restored ({len(passed_over)} tried; first: {passed_over[0]})",
            hint="MLflow is not started on an empty DB; fix that or restore a backup by name with `lab restore`",
        )
    create_empty(data / tracker / tracker_db.MLFLOW_DB)
    now = backups.now_utc().isoformat()
    write_record(data, Restored(EMPTY, "a fresh, empty DB: there was no replica and no backup", "", now, now, 0.0))
    say("no replica and no backup to restore: the tracker starts with a fresh, empty DB")
    return None


def create_empty(db: Path) -> None:
    """A fresh MLflow DB (`mlflow db upgrade` creates its tables), so MLflow's unit, which starts only on an
    existing DB, can start."""
    db.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "mlflow", "db", "upgrade", f"sqlite:///{db}"]
    proc.run(argv, timeout=600, env=tracker_db.server_env())


def write_record(data: Path, done: Restored) -> None:
    partial = data / f".{RECORD}.partial"
    partial.write_text(done.to_json())
    partial.replace(data / RECORD)


def read_record(data: Path) -> dict[str, object] | None:
    try:
        found = json.loads((data / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None
