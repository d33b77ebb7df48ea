"""The tracker's artifacts folder in its backups, on a tracker that keeps artifacts itself (no bucket).

MLflow writes each artifact once, under its experiment's and run's ids, so the folder only grows. A backup
carries it as one uncompressed tar (artifacts are mostly compressed already): one file with one sha256 in
the manifest, checked, copied and rotated like the DBs. Restoring merges the tar's files into the folder:
it puts back every file the backup holds and removes none (a file written after the backup belongs to a
run the restored DB no longer has: an orphan, never lost data). A tar read back is checked before anything
is written: only plain files and folders, at relative paths that stay inside the folder.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path, PurePosixPath

from toolkit.errors import LabError

Entry = tuple[str, os.stat_result]  # a path relative to the folder, its stat
STAGING = ".restoring-"
CHUNK = 1 << 20


def files_of(folder: Path) -> list[Entry]:
    """The folder's plain files (links and special files are left out), sorted; none when it is missing."""
    entries: list[Entry] = []
    if not folder.is_dir():
        return entries
    for parent, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            path = Path(parent) / name
            info = path.lstat()
            if path.is_file() and not path.is_symlink():
                entries.append((path.relative_to(folder).as_posix(), info))
    return entries


def fingerprint(entries: list[Entry]) -> str:
    """What the folder holds, as paths, sizes and modification times: equal when nothing was written."""
    digest = hashlib.sha256()
    for relative, info in entries:
        digest.update(f"{relative}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def pack(folder: Path, entries: list[Entry], target: Path) -> None:
    """Write the files as a tar (POSIX pax, no owners: they are the tracker's own)."""
    try:
        with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
            for relative, _ in entries:
                info = tar.gettarinfo(folder / relative, arcname=relative)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with (folder / relative).open("rb") as handle:
                    tar.addfile(info, handle)
    except (tarfile.TarError, OSError) as exc:
        if isinstance(exc, OSError) and exc.strerror:
            raise  # disk full and the like: the caller says where
        raise LabError(f"the artifacts in {folder} could not be packed ({exc})", hint="try again") from None


def _safe_name(name: str) -> PurePosixPath | None:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or any(part in ("", ".", "..") for part in path.parts) or "\\" in name:
        return None
    return path


def check(tar_path: Path, label: str) -> list[tarfile.TarInfo]:
    """A backup's artifacts tar, read through before anything is written: its entries, or a LabError when it
    does not read or holds anything but plain files and folders at safe relative paths."""
    try:
        with tarfile.open(tar_path, "r:") as tar:
            members = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise LabError(f"{label}: {tar_path.name} is not a readable tar ({exc})", hint="use another backup") from None
    for member in members:
        if not (member.isfile() or member.isdir()) or _safe_name(member.name) is None:
            raise LabError(
                f"{label}: {tar_path.name} holds an unsafe entry {member.name[:80]!r}; nothing was restored",
                hint="use another backup",
            )
    return members


def unpack(tar_path: Path, folder: Path, label: str) -> int:
    """Merge a backup's artifacts tar into `folder` (created if missing): each file written beside its place
    and renamed into it. Returns how many files it put back; the tar is checked first (`check`)."""
    members = check(tar_path, label)
    folder.mkdir(parents=True, exist_ok=True)
    root = folder.resolve()
    written = 0
    with tarfile.open(tar_path, "r:") as tar:
        for member in members:
            if not member.isfile():
                continue
            target = folder / str(_safe_name(member.name))
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.parent.resolve().is_relative_to(root) or target.is_symlink():
                raise LabError(f"{label}: {member.name[:80]!r} would land outside {folder}; restore stopped")
            _write(tar, member, target)
            written += 1
    return written


def _write(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    source = tar.extractfile(member)
    if source is None:
        return
    staging = target.with_name(f"{STAGING}{target.name}")
    try:
        with staging.open("wb") as handle:
            while chunk := source.read(CHUNK):
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.utime(staging, (member.mtime, member.mtime))
        staging.replace(target)
    finally:
        staging.unlink(missing_ok=True)
