"""The dataset store: where `lab data push` puts datasets and workers fetch them from, one layout everywhere.

```
NAME/blobs/<sha256>          a file's bytes, shared by every version of NAME
NAME/versions/<VERSION>.json its manifest (toolkit.data.manifest), written last: a version exists once all its
                             blobs are there
```
A `Store` answers a few primitive questions (names, version ids, blobs present, read/put a manifest, put/open
a blob, delete) and gets the rest from them (`versions`, `manifest`, `delete_version`, `delete_name`). The
backends: `FolderStore` (a folder here: the local target without a bucket), `toolkit.data.bucket.BucketStore`
(the bucket's `datasets/` prefix), `toolkit.data.tracker.TrackerStore` (the tracker's /srv/lab/datasets, over
the lab's SSH access). `store_for(lab)` is the one place that picks a lab's store.

`push` and `remove` are what `lab data push` and `lab data rm` do, whatever the store.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from toolkit.data import manifest as manifests
from toolkit.data.manifest import FileEntry, Manifest, Progress
from toolkit.errors import LabError

if TYPE_CHECKING:
    from toolkit.labs.base import Lab

FOLDER = "datasets"  # the store's folder under LAB_HOME, and its prefix in a bucket
BLOBS = "blobs"
VERSIONS = "versions"
UPLOAD_THREADS = 8  # blobs sent at once
LIST_HINT = "`lab data ls` lists the datasets and their versions"
_VERSION_FILE = re.compile(r"([A-Za-z0-9._-]{1,64})\.json")


class Store(abc.ABC):
    """One lab's dataset store. Names and versions given to it are already checked (toolkit.data.manifest)."""

    where: str  # for people: a folder, gs://bucket/datasets, tracker:/srv/lab/datasets
    upload_threads: int = UPLOAD_THREADS

    # -- what each backend answers -------------------------------------------------------------------------
    @abc.abstractmethod
    def names(self) -> list[str]:
        """The dataset names in the store (those with at least one object), sorted."""

    @abc.abstractmethod
    def version_ids(self, name: str) -> list[str]:
        """The versions of a dataset whose manifest is there (complete versions), sorted by id."""

    @abc.abstractmethod
    def blobs(self, name: str) -> dict[str, int]:
        """The blobs of a dataset that are there: sha256 -> size in bytes."""

    @abc.abstractmethod
    def read_manifest(self, name: str, version: str) -> Manifest:
        """A version's manifest, checked (Manifest.load); LabError if it is missing or does not read."""

    @abc.abstractmethod
    def put_manifest(self, manifest: Manifest) -> None:
        """Write a version's manifest (after all its blobs are there)."""

    @abc.abstractmethod
    def put_blobs(self, name: str, blobs: list[tuple[FileEntry, Path]], progress: Progress | None = None) -> None:
        """Store these files' bytes as NAME/blobs/<sha256>, each checked against its entry's sha256 and size
        as it is read (a file changed since it was hashed is a LabError). `progress` is told bytes sent."""

    @abc.abstractmethod
    def open_blob(self, name: str, sha256: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """A blob's bytes, to read."""

    @abc.abstractmethod
    def delete_manifest(self, name: str, version: str) -> None: ...

    @abc.abstractmethod
    def delete_blobs(self, name: str, sha256s: Iterable[str]) -> None: ...

    @abc.abstractmethod
    def delete_all(self, name: str) -> None:
        """Everything under NAME/ (versions first, then blobs)."""

    # -- derived ----------------------------------------------------------------------------------------------
    def has_blob(self, name: str, sha256: str, size: int) -> bool:
        return self.blobs(name).get(sha256) == size

    def get_blob(self, name: str, sha256: str, dest: Path) -> None:
        """Copy a blob to a local file (written beside it, then renamed into place)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self.open_blob(name, sha256) as source, _atomic_file(dest) as target:
            shutil.copyfileobj(source, target, manifests.CHUNK)

    def versions(self, name: str) -> list[Manifest]:
        """A dataset's versions, oldest first (by pushed_at); an empty list for an unknown name."""
        found = [self.read_manifest(name, version) for version in self.version_ids(name)]
        return sorted(found, key=lambda m: (manifests.parse_time(m.pushed_at), m.version))

    def manifest(self, name: str, version: str | None = None) -> Manifest:
        """A version's manifest, or the newest version's (latest pushed_at); LabError naming what is missing."""
        known = self.version_ids(name)
        if version is None:
            if not known:
                raise unknown(name, None, self.where)
            return self.versions(name)[-1]
        if version not in known:
            raise unknown(name, version, self.where)
        return self.read_manifest(name, version)

    def delete_version(self, name: str, version: str) -> list[str]:
        """Delete a version: its manifest first (so it stops existing at once), then the blobs no other version
        of the dataset uses. Returns the deleted blobs' sha256. Deleting the last version deletes the name."""
        gone = self.manifest(name, version)
        self.delete_manifest(name, version)
        kept: set[str] = set()
        for other in self.versions(name):
            kept |= other.blobs
        if not kept:
            self.delete_all(name)
            return sorted(gone.blobs)
        unused = sorted(gone.blobs - kept)
        self.delete_blobs(name, unused)
        return unused

    def delete_name(self, name: str) -> list[str]:
        """Delete a dataset, every version; returns the versions deleted. LabError if it is not there."""
        versions = self.version_ids(name)
        if name not in self.names():
            raise unknown(name, None, self.where)
        self.delete_all(name)
        return versions


def unknown(name: str, version: str | None, where: str) -> LabError:
    what = f"dataset {name}@{version}" if version else f"dataset {name}"
    return LabError(f"no {what} in the store ({where})", hint=LIST_HINT)


# -- push and remove: `lab data push` / `lab data rm`, whatever the store ------------------------------------------
@dataclass(frozen=True)
class PushResult:
    """What a push did: the version's manifest, how many files and bytes were sent, and whether the version
    was already there (then nothing was sent)."""

    manifest: Manifest
    sent_files: int
    sent_bytes: int
    already_there: bool

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.manifest.name,
            "version": self.manifest.version,
            "files": len(self.manifest.files),
            "bytes": self.manifest.bytes,
            "uploaded_files": self.sent_files,
            "uploaded_bytes": self.sent_bytes,
            "already_there": self.already_there,
            "pushed_at": self.manifest.pushed_at,
        }


@dataclass
class PushProgress:
    """Callbacks a push reports through (the CLI draws bars with them): each phase starts with its total bytes,
    then advances."""

    start: Callable[[str, int], None] = lambda phase, total: None
    advance: Callable[[str, int], None] = lambda phase, amount: None


def push(
    store: Store, source: Path, name: str, version: str | None = None, progress: PushProgress | None = None
) -> PushResult:
    """Push a folder or one file as NAME@VERSION (default: its content hash). Blobs already in the store (same
    sha256 and size) are not sent again; the manifest goes last. A version that is already there with the
    same files sends nothing; with other files it is a LabError (choose another --version, or rm it)."""
    report = progress or PushProgress()
    report.start("hashing", manifests.total_size(source))
    built = manifests.build(source, name, version, progress=lambda n: report.advance("hashing", n))
    if built.version in store.version_ids(name):
        there = store.read_manifest(name, built.version)
        if there.files != built.files:
            raise LabError(
                f"dataset {name}@{built.version} is already in the store with other files",
                hint=f"push with another --version, or remove it first: lab data rm {name}@{built.version}",
            )
        return PushResult(there, sent_files=0, sent_bytes=0, already_there=True)
    present = store.blobs(name)
    missing: dict[str, tuple[FileEntry, Path]] = {}
    for entry in built.files:
        if present.get(entry.sha256) != entry.size and entry.sha256 not in missing:
            missing[entry.sha256] = (entry, manifests.source_file(source, entry.path))
    todo = list(missing.values())
    sent = sum(entry.size for entry, _ in todo)
    report.start("uploading", sent)
    if todo:
        store.put_blobs(name, todo, lambda n: report.advance("uploading", n))
    store.put_manifest(built)
    return PushResult(built, sent_files=len(todo), sent_bytes=sent, already_there=False)


@dataclass(frozen=True)
class RemoveResult:
    name: str
    versions: list[str]
    blobs_deleted: int


def remove(store: Store, name: str, version: str | None) -> RemoveResult:
    """`lab data rm NAME[@VERSION]`: one version (and the blobs only it used), or the whole dataset."""
    if version is None:
        versions = store.delete_name(name)
        return RemoveResult(name, versions, blobs_deleted=-1)
    deleted = store.delete_version(name, version)
    return RemoveResult(name, [version], blobs_deleted=len(deleted))


# -- a store in a folder (the local target without a bucket; also what the tracker keeps) ----------------------------
class FolderStore(Store):
    """The store in a local folder: NAME/blobs/<sha256> and NAME/versions/<VERSION>.json below `root`.
    Files are written beside their final name and renamed into place, so a reader never sees half a blob."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and manifests.NAME_PATTERN.fullmatch(p.name))

    def version_ids(self, name: str) -> list[str]:
        folder = self.root / name / VERSIONS
        if not folder.is_dir():
            return []
        found = (m.group(1) for p in folder.iterdir() if (m := _VERSION_FILE.fullmatch(p.name)) and p.is_file())
        return sorted(v for v in found if manifests.VERSION_PATTERN.fullmatch(v))  # not '.' or '..'

    def blobs(self, name: str) -> dict[str, int]:
        folder = self.root / name / BLOBS
        if not folder.is_dir():
            return {}
        found: dict[str, int] = {}
        with os.scandir(folder) as entries:
            for item in entries:
                if manifests.SHA256_PATTERN.fullmatch(item.name) and item.is_file():
                    found[item.name] = item.stat().st_size
        return found

    def read_manifest(self, name: str, version: str) -> Manifest:
        path = self.root / name / VERSIONS / f"{version}.json"
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            raise unknown(name, version, self.where) from None
        return checked(Manifest.load(text, where=f"the manifest {path}"), name, version, str(path))

    def put_manifest(self, manifest: Manifest) -> None:
        path = self.root / manifest.name / VERSIONS / f"{manifest.version}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        with _atomic_file(path) as handle:
            handle.write(manifest.dump().encode())

    def put_blobs(self, name: str, blobs: list[tuple[FileEntry, Path]], progress: Progress | None = None) -> None:
        folder = self.root / name / BLOBS
        folder.mkdir(parents=True, exist_ok=True)

        def put(item: tuple[FileEntry, Path]) -> None:
            entry, local = item
            with local.open("rb") as source, _atomic_file(folder / entry.sha256) as target:
                copy_checked(source, target, entry, local, progress)

        with ThreadPoolExecutor(max_workers=self.upload_threads) as pool:
            list(pool.map(put, blobs))

    @contextlib.contextmanager
    def open_blob(self, name: str, sha256: str) -> Iterator[IO[bytes]]:
        path = self.root / name / BLOBS / sha256
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise LabError(f"blob {sha256[:12]} of dataset {name} is missing from {self.where}") from None
        with handle:
            yield handle

    def delete_manifest(self, name: str, version: str) -> None:
        (self.root / name / VERSIONS / f"{version}.json").unlink(missing_ok=True)

    def delete_blobs(self, name: str, sha256s: Iterable[str]) -> None:
        for sha256 in sha256s:
            (self.root / name / BLOBS / sha256).unlink(missing_ok=True)

    def delete_all(self, name: str) -> None:
        folder = self.root / name
        shutil.rmtree(folder / VERSIONS, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)


def checked(manifest: Manifest, name: str, version: str, where: str) -> Manifest:
    if (manifest.name, manifest.version) != (name, version):
        raise LabError(f"{where} is that of {manifest.ref}, not {name}@{version}", hint="push that version again")
    return manifest


def copy_checked(
    source: IO[bytes], target: IO[bytes], entry: FileEntry, local: Path, progress: Progress | None = None
) -> None:
    """Copy a file's bytes and check them against its manifest entry on the way (sha256 and size)."""
    digest, size = hashlib.sha256(), 0
    while chunk := source.read(manifests.CHUNK):
        digest.update(chunk)
        size += len(chunk)
        target.write(chunk)
        if progress is not None:
            progress(len(chunk))
    if size != entry.size or digest.hexdigest() != entry.sha256:
        raise changed(local)


def changed(local: Path) -> LabError:
    return LabError(f"{local} changed while it was pushed", hint="push again once nothing writes to it")


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """A file written beside `path` and renamed onto it when the block ends without an error."""
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 -- closed below, then renamed or removed
        dir=path.parent, prefix=f".{path.name[:40]}.", suffix=".part", delete=False
    )
    try:
        with handle:
            yield handle
        Path(handle.name).replace(path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


# -- which store a lab has: the one place that decides -----------------------------------------------------------
def store_for(lab: Lab) -> Store:
    """The lab's dataset store, the one place that decides: the bucket's datasets/ when the lab has a bucket
    (the gcp target's, or the one a stack names with lab:bucketName); else, on a lab with a remote tracker (the
    ssh target), the tracker's /srv/lab/datasets over the lab's SSH access; else $LAB_HOME/datasets."""
    bucket = lab.bucket if hasattr(lab, "bucket") else lab.settings.bucket_name
    if bucket:
        from toolkit.data.bucket import BucketStore

        return BucketStore(bucket)
    if hasattr(lab, "access") and hasattr(lab, "hosts"):
        from toolkit.data.tracker import TrackerStore

        return TrackerStore.of(lab)
    return local_store()


def local_store() -> FolderStore:
    """The local lab's store without a bucket: $LAB_HOME/datasets."""
    from toolkit.config import paths

    return FolderStore(paths.lab_home() / FOLDER)


def open_store(stack_name: str, *, local: bool = False, target: str | None = None) -> Store:
    """The dataset store of a stack's lab (--local / --target as every command takes them)."""
    from toolkit import labs

    return store_for(labs.open_lab(stack_name, local=local, target=target))
