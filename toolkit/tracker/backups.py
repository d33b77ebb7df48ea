"""Backups of the tracker's SQLite DBs: online snapshots, verified, described by a manifest, rotated.

A backup is a folder `<backups>/<id>/` holding a copy of each tracker DB (mlflow.db, optuna.db when it
exists) and `manifest.json` (time, MLflow schema revision, sizes, sha256, counts). It is built in a
hidden `.incoming-<id>` folder and renamed into place only once every copy passed `PRAGMA
integrity_check` and the manifest is written, so a backup that was interrupted (killed, disk full)
never looks like a valid one. Snapshots use SQLite's backup API while the server keeps writing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from toolkit import __version__
from toolkit.errors import LabError

TRACKER_DBS = ("mlflow.db", "optuna.db")
MANIFEST = "manifest.json"
INCOMING = ".incoming-"
HASH_CHUNK = 1 << 20
BUSY_TIMEOUT_S = 60.0
BUSY_SLEEP_S = 0.01  # how soon a snapshot step retries when a writer holds the lock

# What a manifest counts in each DB: table -> label. Missing tables are skipped.
COUNTED_TABLES = {
    "mlflow.db": {"experiments": "experiments", "runs": "runs", "metrics": "metrics"},
    "optuna.db": {"studies": "studies", "trials": "trials"},
}

Progress = Callable[[int, int], None]  # (pages done, pages in all)


@dataclass(frozen=True)
class DbFile:
    """One DB in a backup, as its manifest describes it."""

    name: str
    size: int
    sha256: str
    integrity: str
    counts: dict[str, int] = field(default_factory=dict)
    schema_revision: str | None = None


@dataclass(frozen=True)
class Manifest:
    id: str
    created: str  # ISO 8601, UTC
    stack: str
    reason: str  # manual, down, pre-restore, timer
    lab_version: str
    files: tuple[DbFile, ...]

    @property
    def created_at(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.created)

    @property
    def mlflow(self) -> DbFile | None:
        return next((f for f in self.files if f.name == "mlflow.db"), None)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        files = tuple(DbFile(**f) for f in data.pop("files"))
        return cls(files=files, **data)


@dataclass(frozen=True)
class Backup:
    path: Path
    manifest: Manifest


class _Restarted(Exception):
    """The source changed under a stepped backup, which then starts over."""


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_id(moment: dt.datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%S.%fZ")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def snapshot(source: Path, target: Path, progress: Progress | None = None) -> None:
    """Copy a live SQLite DB with the backup API: a consistent point in time, writers keep going.

    It first copies in steps, for progress; if a writer changes the DB between steps (SQLite would
    start over, and could do so forever under steady writes), it copies the rest in one step, which
    holds a read lock for the copy and cannot restart.
    """
    src = sqlite3.connect(source, timeout=BUSY_TIMEOUT_S)
    dst = sqlite3.connect(target)
    try:
        total = src.execute("PRAGMA page_count").fetchone()[0]
        step = max(total // 50, 256)
        last_remaining = total

        def on_step(status: int, remaining: int, pages: int) -> None:
            nonlocal last_remaining
            if remaining > last_remaining:
                raise _Restarted
            last_remaining = remaining
            if progress:
                progress(pages - remaining, pages)

        try:
            src.backup(dst, pages=step, progress=on_step, sleep=BUSY_SLEEP_S)
        except _Restarted:
            src.backup(dst, pages=-1, sleep=BUSY_SLEEP_S)
        if progress:
            progress(total, total)
    finally:
        dst.close()
        src.close()


def _open_for_check(path: Path) -> sqlite3.Connection:
    """A read-only connection that maps the file: the integrity check runs ~15% faster than through reads."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.execute(f"PRAGMA mmap_size = {max(path.stat().st_size, 1 << 20)}")
    return conn


def inspect(path: Path, name: str) -> DbFile:
    """Integrity check, counts and schema revision of a DB copy, and its size and sha256."""

    def check() -> tuple[str, dict[str, int], str | None]:
        conn = _open_for_check(path)
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
            integrity = "ok" if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:5])
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            counts = {
                label: conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]  # noqa: S608 -- fixed names
                for table, label in COUNTED_TABLES.get(name, {}).items()
                if table in tables
            }
            revision = None
            if "alembic_version" in tables:
                found = conn.execute("SELECT version_num FROM alembic_version").fetchone()
                revision = found[0] if found else None
            return integrity, counts, revision
        finally:
            conn.close()

    # The integrity check and the checksum both read the whole file: run them side by side.
    with ThreadPoolExecutor(max_workers=2) as pool:
        checked = pool.submit(check)
        digest = pool.submit(sha256_of, path)
        integrity, counts, revision = checked.result()
        sha = digest.result()
    return DbFile(
        name=name, size=path.stat().st_size, sha256=sha, integrity=integrity, counts=counts, schema_revision=revision
    )


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def take(
    tracker_dir: Path,
    backups_dir: Path,
    *,
    stack: str,
    reason: str = "manual",
    progress: Progress | None = None,
) -> Backup:
    """Snapshot every tracker DB into a new verified backup; nothing is left behind if it fails."""
    sources = [tracker_dir / name for name in TRACKER_DBS if (tracker_dir / name).is_file()]
    if not sources:
        raise LabError(f"there is no tracker DB in {tracker_dir} to back up", hint="start the lab with `lab up` first")
    moment = now_utc()
    backup_id = new_id(moment)
    incoming = backups_dir / f"{INCOMING}{backup_id}"
    try:
        backups_dir.mkdir(parents=True, exist_ok=True)
        clear_incoming(backups_dir)
        incoming.mkdir()
    except OSError as exc:
        raise LabError(
            f"cannot write backups to {backups_dir}: {exc.strerror or exc}", hint="it must be a writable folder"
        ) from None
    try:
        files = []
        for source in sources:
            copy = incoming / source.name
            snapshot(source, copy, progress)
            _fsync(copy)
            described = inspect(copy, source.name)
            if described.integrity != "ok":
                raise LabError(
                    f"the snapshot of {source.name} failed its integrity check: {described.integrity}",
                    hint=f"check {source} with `sqlite3 {source} 'PRAGMA integrity_check'`",
                )
            files.append(described)
        manifest = Manifest(
            id=backup_id,
            created=moment.isoformat(),
            stack=stack,
            reason=reason,
            lab_version=__version__,
            files=tuple(files),
        )
        (incoming / MANIFEST).write_text(manifest.to_json())
        _fsync(incoming / MANIFEST)
        final = backups_dir / backup_id
        incoming.rename(final)
        _fsync(backups_dir)
    except (OSError, sqlite3.Error) as exc:
        shutil.rmtree(incoming, ignore_errors=True)
        reason = getattr(exc, "strerror", None) or str(exc)
        raise LabError(
            f"the backup could not be written to {backups_dir}: {reason}",
            hint="free some space there; the earlier backups are untouched",
        ) from None
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    return Backup(final, manifest)


def clear_incoming(backups_dir: Path) -> None:
    """Remove what interrupted backups left (they never became backups)."""
    for leftover in backups_dir.glob(f"{INCOMING}*"):
        shutil.rmtree(leftover, ignore_errors=True)


def read_manifest(folder: Path) -> Manifest:
    try:
        return Manifest.from_json((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise LabError(f"{folder} is not a backup: it has no {MANIFEST}") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise LabError(f"{folder / MANIFEST} is damaged ({exc})", hint="use another backup") from None


def verify(folder: Path) -> Manifest:
    """Check a backup against its manifest: every file there, same size and sha256, integrity ok."""
    manifest = read_manifest(folder)
    for described in manifest.files:
        copy = folder / described.name
        if not copy.is_file():
            raise LabError(f"backup {manifest.id} is missing {described.name}", hint="use another backup")
        size = copy.stat().st_size
        if size != described.size:
            raise LabError(
                f"backup {manifest.id}: {described.name} is {size} bytes, its manifest says "
                f"{described.size} (truncated or damaged)",
                hint="use another backup",
            )
        if sha256_of(copy) != described.sha256:
            raise LabError(
                f"backup {manifest.id}: {described.name} does not match its sha256 (damaged)", hint="use another backup"
            )
        conn = _open_for_check(copy)
        try:
            result = conn.execute("PRAGMA integrity_check").fetchall()
        except sqlite3.DatabaseError as exc:
            raise LabError(
                f"backup {manifest.id}: {described.name} is not a readable SQLite DB ({exc})", hint="use another backup"
            ) from None
        finally:
            conn.close()
        if result != [("ok",)]:
            raise LabError(
                f"backup {manifest.id}: {described.name} fails its integrity check", hint="use another backup"
            )
    return manifest


def listing(backups_dir: Path) -> list[Backup]:
    """Complete backups (those with a readable manifest), newest first; nothing is verified here."""
    found = []
    if backups_dir.is_dir():
        for folder in backups_dir.iterdir():
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            with contextlib.suppress(LabError):
                found.append(Backup(folder, read_manifest(folder)))
    return sorted(found, key=lambda b: b.manifest.created, reverse=True)


def find(backups_dir: Path, name: str) -> Backup:
    """A backup by id (or a unique prefix of one), or by path."""
    as_path = Path(name).expanduser()
    if as_path.is_dir() and (as_path / MANIFEST).exists():
        return Backup(as_path, read_manifest(as_path))
    matches = [b for b in listing(backups_dir) if b.manifest.id.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise LabError(f"no backup {name!r} in {backups_dir}", hint="`lab status` shows the latest one")
    raise LabError(f"{name!r} matches {len(matches)} backups", hint="give more of the id")


def rotate(backups_dir: Path, *, keep_last: int, keep_days: int, now: dt.datetime | None = None) -> list[Path]:
    """Keep the newest `keep_last` backups, and the newest of each day for `keep_days` days."""
    moment = now or now_utc()
    backups = listing(backups_dir)
    keep = {b.path for b in backups[:keep_last]}
    seen_days: set[dt.date] = set()
    for item in backups:
        day = item.manifest.created_at.date()
        if (moment - item.manifest.created_at).days < keep_days and day not in seen_days:
            seen_days.add(day)
            keep.add(item.path)
    removed = [b.path for b in backups if b.path not in keep]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
