"""Backups of the tracker's SQLite DBs: online snapshots, checked, described by a manifest, rotated.

A backup is a folder `<backups>/<id>/` holding a copy of each tracker DB (mlflow.db, optuna.db when it
exists), on a tracker that keeps its artifacts itself a tar of them (artifacts.tar), and `manifest.json`
(time, MLflow schema revision, sizes, sha256, counts, which check ran). It is built in a hidden
`.incoming-<id>-<pid>` folder and renamed into place only once every copy passed `PRAGMA quick_check` and
the manifest is written, so a backup that was interrupted (killed, disk full) never looks like a valid one.
Snapshots use SQLite's backup API while the server keeps writing, one at a time per backups folder (a lock
file there); the full `PRAGMA integrity_check` runs when a backup is restored (`verify`).

Everything read back (folder names, manifests) is checked before it becomes a path or wins a choice: an id
is a timestamp as `new_id` writes it, a manifest names only the files a backup may hold, and one that does
not read is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolkit import __version__
from toolkit.errors import LabError
from toolkit.tracker import artifacts as tracker_artifacts

TRACKER_DBS = ("mlflow.db", "optuna.db")
ARTIFACTS_TAR = "artifacts.tar"
MANIFEST = "manifest.json"
INCOMING = ".incoming-"
LOCK = ".lock"
HASH_CHUNK = 1 << 20
BUSY_TIMEOUT_S = 60.0
BUSY_SLEEP_S = 0.01  # how soon a snapshot step retries when a writer holds the lock
LOCK_WAIT_S = 600.0  # how long a snapshot waits for another one in the same folder to finish
LOCK_POLL_S = 0.2
CLOCK_SKEW = dt.timedelta(days=1)  # how far ahead of this machine's clock a backup's id may be

# The checks a manifest may name: a snapshot gets the quick one (structure, pages, formats: an eighth of
# the time on a 1 GiB DB), a restore the full one (also every index against its table).
QUICK_CHECK = "quick_check"
KEPT_FOR_THE_PERIOD = ("pre-restore",)  # reasons rotation keeps for lab:backupDays whatever the count
FULL_CHECK = "integrity_check"
CHECKS = (QUICK_CHECK, FULL_CHECK)

ID_FORMAT = "%Y%m%dT%H%M%S.%fZ"
ID_PATTERN = re.compile(r"\d{8}T\d{6}\.\d{6}Z")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")

# What a manifest counts in each DB: table -> label. Missing tables are skipped.
COUNTED_TABLES = {
    "mlflow.db": {"experiments": "experiments", "runs": "runs", "metrics": "metrics"},
    "optuna.db": {"studies": "studies", "trials": "trials"},
}

Progress = Callable[[int, int], None]  # (pages done, pages in all)

_warned: set[str] = set()


def warn(message: str) -> None:
    """A one-line warning on stderr, once per process (listing runs several times in one command)."""
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class DbFile:
    """One DB in a backup, as its manifest describes it."""

    name: str
    size: int
    sha256: str
    integrity: str
    counts: dict[str, int] = field(default_factory=dict)
    schema_revision: str | None = None
    check: str = FULL_CHECK  # the PRAGMA that said `integrity`; manifests before it existed ran the full one


@dataclass(frozen=True)
class ArtifactsFile:
    """The tracker's artifacts folder as one tar, in the backups of a tracker without a bucket."""

    name: str
    size: int
    sha256: str
    files: int
    fingerprint: str  # of the folder's paths, sizes and times: an unchanged folder reuses the previous tar


@dataclass(frozen=True)
class Manifest:
    id: str
    created: str  # ISO 8601, UTC
    stack: str
    reason: str  # manual, down, pre-restore, timer, shutdown
    lab_version: str
    files: tuple[DbFile, ...]
    artifacts: ArtifactsFile | None = None

    @property
    def created_at(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.created)

    @property
    def mlflow(self) -> DbFile | None:
        return next((f for f in self.files if f.name == "mlflow.db"), None)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files) + (self.artifacts.size if self.artifacts else 0)

    @property
    def names(self) -> tuple[str, ...]:
        """Every data file of the backup (its manifest aside)."""
        return tuple(f.name for f in self.files) + ((self.artifacts.name,) if self.artifacts else ())

    def to_json(self) -> str:
        document = asdict(self)
        if self.artifacts is None:
            del document["artifacts"]  # as manifests were before there was one
        return json.dumps(document, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """A manifest, every field checked: a ValueError says what is wrong. Unknown keys are ignored."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        files = _field(data, "files", list)
        if not all(isinstance(f, dict) for f in files):
            raise ValueError("files: not a list of objects")
        described = tuple(_db_file(f) for f in files)
        names = [f.name for f in described]
        if len(set(names)) != len(names):
            raise ValueError("files: a name appears twice")
        raw_artifacts = data.get("artifacts")
        if raw_artifacts is not None and not isinstance(raw_artifacts, dict):
            raise ValueError("artifacts: not an object")
        manifest = cls(
            id=_field(data, "id", str),
            created=_field(data, "created", str),
            stack=_field(data, "stack", str),
            reason=_field(data, "reason", str),
            lab_version=_field(data, "lab_version", str),
            files=described,
            artifacts=_artifacts_file(raw_artifacts) if raw_artifacts is not None else None,
        )
        if not valid_id(manifest.id):
            raise ValueError(f"id {manifest.id[:40]!r} is not a backup id")
        try:
            created = manifest.created_at
        except ValueError:
            raise ValueError(f"created {manifest.created[:40]!r} is not a time") from None
        if created.tzinfo is None or new_id(created.astimezone(dt.timezone.utc)) != manifest.id:
            raise ValueError(f"created {manifest.created!r} is not the time of id {manifest.id}")
        return manifest


def _field(data: dict[str, Any], key: str, kind: type, default: Any = ...) -> Any:
    value = data.get(key, default)
    if value is ...:
        raise ValueError(f"{key}: missing")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{key}: not a {kind.__name__}")
    return value


def _checked_size_and_sha(data: dict[str, Any]) -> tuple[int, str]:
    size = _field(data, "size", int)
    sha = _field(data, "sha256", str)
    if size < 0 or not SHA256_PATTERN.fullmatch(sha):
        raise ValueError(f"{data.get('name')}: a bad size or sha256")
    return size, sha


def _db_file(data: dict[str, Any]) -> DbFile:
    name = _field(data, "name", str)
    if name not in TRACKER_DBS:
        raise ValueError(f"files: {name[:60]!r} is not a tracker DB")
    size, sha = _checked_size_and_sha(data)
    counts = _field(data, "counts", dict, {})
    if not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in counts.items()):
        raise ValueError(f"{name}: counts are not numbers")
    revision = data.get("schema_revision")
    if revision is not None and not isinstance(revision, str):
        raise ValueError(f"{name}: schema_revision: not a str")
    check = _field(data, "check", str, FULL_CHECK)
    if check not in CHECKS:
        raise ValueError(f"{name}: check {check[:40]!r} is not one of {', '.join(CHECKS)}")
    return DbFile(
        name=name,
        size=size,
        sha256=sha,
        integrity=_field(data, "integrity", str),
        counts=counts,
        schema_revision=revision,
        check=check,
    )


def _artifacts_file(data: dict[str, Any]) -> ArtifactsFile:
    name = _field(data, "name", str)
    if name != ARTIFACTS_TAR:
        raise ValueError(f"artifacts: {name[:60]!r} is not {ARTIFACTS_TAR}")
    size, sha = _checked_size_and_sha(data)
    files = _field(data, "files", int)
    return ArtifactsFile(name=name, size=size, sha256=sha, files=files, fingerprint=_field(data, "fingerprint", str))


@dataclass(frozen=True)
class Backup:
    path: Path
    manifest: Manifest


class _Restarted(Exception):
    """The source changed under a stepped backup, which then starts over."""


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_id(moment: dt.datetime) -> str:
    return moment.strftime(ID_FORMAT)


def valid_id(text: str) -> bool:
    """Whether a name read back (a folder, an object in a bucket, a tracker's answer) is a backup id: a
    timestamp exactly as `new_id` writes it. Anything else never becomes a path, nor the newest backup."""
    if not ID_PATTERN.fullmatch(text):
        return False
    try:
        return new_id(dt.datetime.strptime(text, ID_FORMAT)) == text
    except ValueError:
        return False


def id_problem(text: str, now: dt.datetime | None = None) -> str | None:
    """Why a name read back cannot be taken for a backup's id, or None: it must be a backup id, and not
    dated ahead of this machine's clock by more than a day (such a backup would stay the newest forever)."""
    if not valid_id(text):
        return "its name is not a backup id"
    moment = dt.datetime.strptime(text, ID_FORMAT).replace(tzinfo=dt.timezone.utc)
    if moment > (now or now_utc()) + CLOCK_SKEW:
        return "it is dated in the future"
    return None


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


def _run_check(conn: sqlite3.Connection, check: str) -> str:
    """`PRAGMA quick_check` or `integrity_check`: "ok", or the first problems it names."""
    if check not in CHECKS:
        raise ValueError(f"unknown check {check!r}")
    rows = conn.execute(f"PRAGMA {check}").fetchall()
    return "ok" if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows[:5])


def inspect(path: Path, name: str, check: str = QUICK_CHECK) -> DbFile:
    """A check (`quick_check` unless told), counts and schema revision of a DB copy, and its size and sha256."""

    def examine() -> tuple[str, dict[str, int], str | None]:
        conn = _open_for_check(path)
        try:
            integrity = _run_check(conn, check)
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

    # The check and the checksum both read the whole file: run them side by side.
    with ThreadPoolExecutor(max_workers=2) as pool:
        checked = pool.submit(examine)
        digest = pool.submit(sha256_of, path)
        integrity, counts, revision = checked.result()
        sha = digest.result()
    return DbFile(
        name=name,
        size=path.stat().st_size,
        sha256=sha,
        integrity=integrity,
        counts=counts,
        schema_revision=revision,
        check=check,
    )


def fsync(path: Path) -> None:
    """Flush a file, or a folder's entries (renames, new files), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush a folder's files and the folder itself to disk (a download, before it is called verified)."""
    for child in folder.iterdir():
        if child.is_file() and not child.is_symlink():
            fsync(child)
    fsync(folder)


# -- one snapshot at a time, and the folders they are built in --------------------------------------------------


def _lock_holder(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f"pid {int(path.read_text().split()[0])}"
    return "another process"


@contextlib.contextmanager
def snapshot_lock(backups_dir: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the backups folder's lock (flock on `.lock`) while a snapshot is built: a second snapshot (the
    hourly timer and a `lab down` from cron) waits up to `wait_s` seconds for it, then fails in one line.
    The lock goes with the process: a killed snapshot never leaves it held."""
    import fcntl

    path = backups_dir / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _unwritable(backups_dir, exc) from None
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LabError(
                        f"another snapshot ({_lock_holder(path)}) is being taken in {backups_dir} "
                        f"and did not finish within {wait_s:g} s",
                        hint="try again once it has finished",
                    ) from None
                time.sleep(LOCK_POLL_S)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def incoming_folder(backups_dir: Path, backup_id: str) -> Path:
    """Where this process builds or downloads backup `backup_id` before it is renamed into place; the name
    carries the process's id, so a folder whose process is gone is known to be stale."""
    return backups_dir / f"{INCOMING}{backup_id}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def clear_incoming(backups_dir: Path) -> list[Path]:
    """Remove what interrupted backups and downloads left (they never became backups): the incoming
    folders whose process is gone. Another process's folder, still being filled, stays."""
    removed = []
    for leftover in backups_dir.glob(f"{INCOMING}*"):
        _, _, pid = leftover.name.rpartition("-")
        if pid.isdigit() and _alive(int(pid)):
            continue
        shutil.rmtree(leftover, ignore_errors=True)
        removed.append(leftover)
    return removed


def take(
    tracker_dir: Path,
    backups_dir: Path,
    *,
    stack: str,
    reason: str = "manual",
    progress: Progress | None = None,
    artifacts: Path | None = None,
    lock_wait_s: float = LOCK_WAIT_S,
) -> Backup:
    """Snapshot every tracker DB into a new checked backup; nothing is left behind if it fails. With
    `artifacts`, a folder whose files the backup also carries (as a tar; nothing when it holds none)."""
    sources = [tracker_dir / name for name in TRACKER_DBS if (tracker_dir / name).is_file()]
    if not sources:
        raise LabError(f"there is no tracker DB in {tracker_dir} to back up", hint="start the lab with `lab up` first")
    try:
        backups_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(backups_dir, exc) from None
    with snapshot_lock(backups_dir, lock_wait_s):
        return _take_locked(tracker_dir, backups_dir, sources, stack, reason, progress, artifacts)


def _unwritable(backups_dir: Path, exc: OSError) -> LabError:
    return LabError(
        f"cannot write backups to {backups_dir}: {exc.strerror or exc}", hint="it must be a writable folder"
    )


def _take_locked(
    tracker_dir: Path,
    backups_dir: Path,
    sources: list[Path],
    stack: str,
    reason: str,
    progress: Progress | None,
    artifacts: Path | None,
) -> Backup:
    moment = now_utc()  # read under the lock: ids grow in the order snapshots are taken
    backup_id = new_id(moment)
    incoming = incoming_folder(backups_dir, backup_id)
    try:
        clear_incoming(backups_dir)
        incoming.mkdir()
    except OSError as exc:
        raise _unwritable(backups_dir, exc) from None
    try:
        files = []
        for source in sources:
            copy = incoming / source.name
            snapshot(source, copy, progress)
            fsync(copy)
            described = inspect(copy, source.name)
            if described.integrity != "ok":
                raise LabError(
                    f"the snapshot of {source.name} failed its {described.check}: {described.integrity}",
                    hint=f"check {source} with `sqlite3 {source} 'PRAGMA integrity_check'`",
                )
            files.append(described)
        carried = _carry_artifacts(artifacts, incoming, backups_dir) if artifacts is not None else None
        manifest = Manifest(
            id=backup_id,
            created=moment.isoformat(),
            stack=stack,
            reason=reason,
            lab_version=__version__,
            files=tuple(files),
            artifacts=carried,
        )
        (incoming / MANIFEST).write_text(manifest.to_json())
        fsync(incoming / MANIFEST)
        fsync(incoming)
        final = backups_dir / backup_id
        incoming.rename(final)
        fsync(backups_dir)
    except (OSError, sqlite3.Error) as exc:
        shutil.rmtree(incoming, ignore_errors=True)
        why = getattr(exc, "strerror", None) or str(exc)
        raise LabError(
            f"the backup could not be written to {backups_dir}: {why}",
            hint="free some space there; the earlier backups are untouched",
        ) from None
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    return Backup(final, manifest)


def _carry_artifacts(folder: Path, incoming: Path, backups_dir: Path) -> ArtifactsFile | None:
    """The artifacts folder as `artifacts.tar` in the backup being built: a hard link to the newest backup's
    tar when the folder has not changed since (no time, no space), else a new tar. None when it holds no file."""
    entries = tracker_artifacts.files_of(folder)
    if not entries:
        return None
    fingerprint = tracker_artifacts.fingerprint(entries)
    target = incoming / ARTIFACTS_TAR
    newest = listing(backups_dir)
    previous = newest[0].manifest.artifacts if newest else None
    if previous is not None and previous.fingerprint == fingerprint:
        reused = newest[0].path / ARTIFACTS_TAR
        with contextlib.suppress(OSError):
            if reused.stat().st_size == previous.size:
                os.link(reused, target)
                return previous
    tracker_artifacts.pack(folder, entries, target)
    fsync(target)
    return ArtifactsFile(
        name=ARTIFACTS_TAR,
        size=target.stat().st_size,
        sha256=sha256_of(target),
        files=len(entries),
        fingerprint=fingerprint,
    )


# -- reading backups back ---------------------------------------------------------------------------------------


def read_manifest(folder: Path) -> Manifest:
    try:
        return Manifest.from_json((folder / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise LabError(f"{folder} is not a backup: it has no {MANIFEST}") from None
    except OSError as exc:
        raise LabError(f"cannot read {folder / MANIFEST}: {exc.strerror or exc}") from None
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise LabError(f"{folder / MANIFEST} is damaged ({exc})", hint="use another backup") from None


def verify(folder: Path, check: str = FULL_CHECK) -> Manifest:
    """Check a backup against its manifest: every file there, same size and sha256, and each DB passes
    `check`: the full `integrity_check` unless told (a restore), `quick_check` for a fresh download of a
    backup checked where it was taken."""
    manifest = read_manifest(folder)
    expected = [(f.name, f.size, f.sha256) for f in manifest.files]
    if manifest.artifacts:
        expected.append((manifest.artifacts.name, manifest.artifacts.size, manifest.artifacts.sha256))
    for name, expected_size, expected_sha in expected:
        copy = folder / name
        if not copy.is_file():
            raise LabError(f"backup {manifest.id} is missing {name}", hint="use another backup")
        size = copy.stat().st_size
        if size != expected_size:
            raise LabError(
                f"backup {manifest.id}: {name} is {size} bytes, its manifest says {expected_size} "
                "(truncated or damaged)",
                hint="use another backup",
            )
        if sha256_of(copy) != expected_sha:
            raise LabError(
                f"backup {manifest.id}: {name} does not match its sha256 (damaged)", hint="use another backup"
            )
    for described in manifest.files:
        try:
            conn = _open_for_check(folder / described.name)
            try:
                result = _run_check(conn, check)
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            raise LabError(
                f"backup {manifest.id}: {described.name} is not a readable SQLite DB ({exc})", hint="use another backup"
            ) from None
        if result != "ok":
            raise LabError(
                f"backup {manifest.id}: {described.name} fails its integrity check", hint="use another backup"
            )
    return manifest


def listing(backups_dir: Path) -> list[Backup]:
    """Complete backups, newest first; nothing is verified here. Only folders named by a backup id whose
    manifest reads and agrees count: anything else is skipped, with a warning when it looks like a backup."""
    found = []
    if backups_dir.is_dir():
        for folder in backups_dir.iterdir():
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            problem = id_problem(folder.name)
            if problem:
                warn(f"skipping {folder}: {problem}")
                continue
            try:
                manifest = read_manifest(folder)
            except LabError as exc:
                warn(f"skipping {folder.name}: {exc.one_line()}")
                continue
            if manifest.id != folder.name:
                warn(f"skipping {folder.name}: its manifest is that of backup {manifest.id}")
                continue
            found.append(Backup(folder, manifest))
    return sorted(found, key=lambda b: b.manifest.id, reverse=True)


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
    """Keep the newest `keep_last` backups, the newest of each day for `keep_days` days, and every backup a
    restore took of what it replaced (reason `pre-restore`) for `keep_days` days. What `listing` skips (not a
    backup of ours, a manifest that does not read) is never removed here."""
    moment = now or now_utc()
    backups = listing(backups_dir)
    keep = {b.path for b in backups[:keep_last]}
    # What a restore replaced is kept for the whole period, whatever the count: it may be the only copy of
    # the runs the restore undid.
    keep |= {
        b.path
        for b in backups
        if b.manifest.reason in KEPT_FOR_THE_PERIOD and (moment - b.manifest.created_at).days < max(keep_days, 1)
    }
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
