"""A dataset version's manifest: every file's path, size and sha256, and the version id they hash to.

The layout it describes is the same in every store (toolkit.data.store):
`NAME/blobs/<sha256>` holds a file's bytes, `NAME/versions/<VERSION>.json` this manifest, written last.
A manifest read from a store is checked before any of its names becomes a path (`Manifest.load`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from toolkit.errors import LabError

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
# `.` and `..` are not versions: a version is a folder name on every host that syncs it (LAB_DATA/NAME/VERSION).
VERSION_PATTERN = re.compile(r"(?!\.{1,2}\Z)[A-Za-z0-9._-]{1,64}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
VERSION_DIGITS = 12  # the default version: this many hex digits of the content hash
CHUNK = 1 << 20  # bytes read at a time while hashing
STORE_HINT = "the store is damaged or is not the lab's: check the address, or push the dataset again"
HASH_THREADS = 8  # files hashed at once (hashlib releases the GIL on large buffers)

Progress = Callable[[int], None]  # told how many more bytes were read (or sent)


@dataclass(frozen=True)
class FileEntry:
    """One file of a dataset: its posix path relative to the dataset's root, size in bytes, and sha256 (hex)."""

    path: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    """One version of one dataset. `files` are sorted by path; `pushed_at` is UTC, ISO 8601 with a Z."""

    name: str
    version: str
    pushed_at: str
    files: tuple[FileEntry, ...]

    @property
    def bytes(self) -> int:
        return sum(entry.size for entry in self.files)

    @property
    def blobs(self) -> set[str]:
        """The sha256 of every file (the blob names this version needs)."""
        return {entry.sha256 for entry in self.files}

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "pushed_at": self.pushed_at,
            "bytes": self.bytes,
            "files": [entry.to_dict() for entry in self.files],
        }

    def dump(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def load(cls, text: str | bytes, *, where: str = "the manifest") -> Manifest:
        """A manifest from its JSON, checked: names, versions, hashes and paths that are safe to use as paths."""
        try:
            raw = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise LabError(f"{where} is not JSON: {exc}", hint="push that version again") from None
        return cls.from_dict(raw, where=where)

    @classmethod
    def from_dict(cls, raw: Any, *, where: str = "the manifest") -> Manifest:
        if not isinstance(raw, dict) or not isinstance(raw.get("files"), list):
            raise LabError(f"{where} is not a dataset manifest", hint="push that version again")
        name, version, pushed_at = raw.get("name"), raw.get("version"), raw.get("pushed_at")
        check_name(name if isinstance(name, str) else repr(name))
        check_version(version if isinstance(version, str) else repr(version))
        if not isinstance(pushed_at, str) or parse_time(pushed_at) is None:
            raise LabError(f"{where} has no valid pushed_at", hint="push that version again")
        files = tuple(sorted((_entry(item, where) for item in raw["files"]), key=lambda e: e.path))
        paths = [entry.path for entry in files]
        if len(set(paths)) != len(paths):
            raise LabError(f"{where} lists a path twice", hint="push that version again")
        sizes: dict[str, int] = {}
        for entry in files:  # a blob is fetched once for all its paths, and capped at its size: one size each
            if sizes.setdefault(entry.sha256, entry.size) != entry.size:
                raise LabError(f"{where} gives {entry.sha256[:12]} two sizes", hint="push that version again")
        return cls(name=name, version=version, pushed_at=pushed_at, files=files)  # type: ignore[arg-type]

    @classmethod
    def from_rows(cls, raw: Any, *, where: str) -> Manifest:
        """A manifest as a sync caches it (`files` as sorted `[path, size, sha256]` rows), with the checks of
        `from_dict`: 50,000 rows in a fraction of a second."""
        rows = raw.get("files") if isinstance(raw, dict) else None
        if not isinstance(rows, list):
            raise LabError(f"{where} is not a dataset manifest", hint="push that version again")
        entries = []
        sizes: dict[str, int] = {}
        previous = ""
        match = SHA256_PATTERN.fullmatch
        for row in rows:
            if not (isinstance(row, list) and len(row) == 3):
                raise LabError(f"{where} has a file entry that is not [path, size, sha256]", hint="push it again")
            path, size, digest = row
            if not isinstance(path, str) or not safe_path(path):
                raise LabError(f"{where} has an unsafe file path {path!r}", hint="push that version again")
            if path <= previous:
                raise LabError(f"{where} lists {path} twice or out of order", hint="push that version again")
            if type(size) is not int or size < 0:
                raise LabError(f"{where} has a bad size for {path}", hint="push that version again")
            if not isinstance(digest, str) or not match(digest):
                raise LabError(f"{where} has a bad sha256 for {path}", hint="push that version again")
            if sizes.setdefault(digest, size) != size:
                raise LabError(f"{where} gives {digest[:12]} two sizes", hint="push that version again")
            previous = path
            entries.append(FileEntry(path, size, digest))
        head = cls.from_dict({**raw, "files": []}, where=where)  # name, version, pushed_at
        return cls(name=head.name, version=head.version, pushed_at=head.pushed_at, files=tuple(entries))


def _entry(item: Any, where: str) -> FileEntry:
    if not isinstance(item, dict):
        raise LabError(f"{where} has a file entry that is not an object", hint="push that version again")
    path, size, digest = item.get("path"), item.get("size"), item.get("sha256")
    if not isinstance(path, str) or not safe_path(path):
        raise LabError(f"{where} has an unsafe file path {path!r}", hint="push that version again")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise LabError(f"{where} has a bad size for {path}", hint="push that version again")
    if not isinstance(digest, str) or not SHA256_PATTERN.fullmatch(digest):
        raise LabError(f"{where} has a bad sha256 for {path}", hint="push that version again")
    return FileEntry(path=path, size=size, sha256=digest)


def safe_path(path: str) -> bool:
    """A relative posix path with no empty, `.` or `..` part, no backslash and no NUL: safe below a folder."""
    if not path or path.startswith("/") or "\\" in path or "\0" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise LabError(
            f"{name!r} is not a dataset name",
            hint="use lowercase letters, digits, '.', '_' and '-' (at most 63, starting with a letter or digit)",
        )
    return name


def check_version(version: str) -> str:
    if not VERSION_PATTERN.fullmatch(version):
        raise LabError(
            f"{version!r} is not a dataset version",
            hint="use letters, digits, '.', '_' and '-' (at most 64)",
        )
    return version


def check_listed(listed: Any, name: str, where: str) -> dict[str, str]:
    """A store's answer to "which versions of NAME are there" ({VERSION: tag}), each version checked before it
    becomes a path on this host: a store that lists another name (`../x`, `a/b`, `..`) is refused, naming it."""
    if not isinstance(listed, dict):
        raise LabError(f"the dataset store {where} answered no list of {name}'s versions", hint=STORE_HINT)
    for version, tag in listed.items():
        if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
            raise LabError(
                f"the dataset store {where} lists {str(version)[:80]!r} as a version of {name}, which is not a dataset"
                " version (letters, digits, '.', '_' and '-', not '.' or '..')",
                hint=STORE_HINT,
            )
        if not isinstance(tag, str) or len(tag) > 200:
            raise LabError(f"the dataset store {where} lists {name}@{version} with a bad tag", hint=STORE_HINT)
    return listed


def parse_ref(ref: str) -> tuple[str, str | None]:
    """`NAME` or `NAME@VERSION`, checked."""
    name, _, version = ref.partition("@")
    check_name(name)
    if "@" in ref:
        check_version(version)
        return name, version
    return name, None


def content_version(files: Iterable[FileEntry]) -> str:
    """The default version: the first 12 hex digits of sha256 over the sorted lines `path\\0size\\0sha256\\n`."""
    digest = hashlib.sha256()
    for entry in sorted(files, key=lambda e: e.path):
        digest.update(f"{entry.path}\0{entry.size}\0{entry.sha256}\n".encode())
    return digest.hexdigest()[:VERSION_DIGITS]


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> dt.datetime | None:
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    """The file's sha256 (hex), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return digest.hexdigest()


def scan(source: Path) -> list[tuple[str, Path]]:
    """The files a push of `source` holds: (posix path in the dataset, file here), sorted by path.

    A folder: every regular file below it (symlinked files are read through; symlinked folders are not
    followed). One file (an archive): that file, under its own name, unchanged."""
    if source.is_file():
        return [(source.name, source)]
    if not source.is_dir():
        raise LabError(f"{source} is neither a folder nor a file", hint="give the dataset's folder or archive")
    found: list[tuple[str, Path]] = []
    for folder, _, names in os.walk(source):
        for file_name in names:
            local = Path(folder) / file_name
            if local.is_file():
                found.append((PurePosixPath(local.relative_to(source).as_posix()).as_posix(), local))
    if not found:
        raise LabError(f"{source} holds no files", hint="give a folder with the dataset's files, or an archive")
    return sorted(found)


def source_file(source: Path, path: str) -> Path:
    """The local file of one of `source`'s dataset paths (see `scan`)."""
    return source if source.is_file() else source.joinpath(*path.split("/"))


def total_size(source: Path) -> int:
    return sum(local.stat().st_size for _, local in scan(source))


def build(
    source: Path,
    name: str,
    version: str | None = None,
    *,
    progress: Progress | None = None,
    threads: int = HASH_THREADS,
) -> Manifest:
    """The manifest of a folder or one file: each file hashed (streamed, `threads` at a time); the version is
    `version`, else the content hash (`content_version`)."""
    check_name(name)
    if version is not None:
        check_version(version)
    files = scan(source)

    def entry(item: tuple[str, Path]) -> FileEntry:
        path, local = item
        size = local.stat().st_size
        return FileEntry(path=path, size=size, sha256=sha256_file(local, progress))

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        entries = tuple(pool.map(entry, files))
    return Manifest(name=name, version=version or content_version(entries), pushed_at=now(), files=entries)
