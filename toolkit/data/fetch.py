"""Datasets from the store onto this host's disk: `LAB_DATA/NAME/VERSION/<path>`, each file checked.

`python -m toolkit.data.fetch --store ADDRESS --root LAB_DATA [--json] NAME[@VERSION] ...` (on a worker:
`/opt/lab/venv/bin/python -m toolkit.data.fetch ...`), or `sync()` in-process. The store's address is one of:

- a folder (`/abs/path` or `file:///abs/path`): the local lab's `$LAB_HOME/datasets`, the tracker's own;
- `gs://BUCKET/datasets`: the bucket (google-cloud-storage; on a worker its read-only service account);
- `http://TRACKER:PORT`: the tracker's read-only dataset server (toolkit.data.serve), on the ssh target
  without a bucket. Every request carries the stack's dataset token (`Authorization: Bearer`, read from
  `--token-file`, else `$LAB_DATASETS_TOKEN_FILE`, else /etc/lab/datasets.token, which the lab's roles write 0600).

Nothing a store says is trusted: every version it lists is checked (toolkit.data.manifest.check_listed) and every
manifest (Manifest.load: names, safe relative paths, sizes, sha256) before any of it becomes a path, the manifests
cached on this host are checked again when read back, and no file is written past the size its manifest declares.

How a sync goes, per dataset: the version is resolved (`NAME@VERSION`, or the newest by `pushed_at`); every file
of its manifest already in place and verified is kept; the others are fetched in parallel into a partial file
(`LAB_DATA/.lab/partial/NAME/<sha256>`), finished from where an interrupted sync left it, hashed as they arrive, and put
in place (rename) only when their sha256 is the manifest's. A file is "verified" when its size and mtime_ns are
those recorded when it was last hashed (`LAB_DATA/.lab/NAME/VERSION.json`); a file whose size or mtime changed
is hashed again, and fetched again when its bytes differ. So a second sync of an unchanged dataset reads one
manifest and stats each file; nothing is hashed or fetched.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from toolkit.data import STATE  # beside the datasets: partial files, what was verified, locks, manifests
from toolkit.data.manifest import Manifest, check_listed, parse_ref, parse_time
from toolkit.errors import LabError

THREADS = 16  # files fetched at once (small files are latency-bound: more in flight, more throughput)
CHUNK = 1 << 20
HTTP_TIMEOUT_S = 60.0
TOKEN_FILE = Path("/etc/lab/datasets.token")  # the stack's dataset token (lab_tracker and lab_worker write it, 0600)
TOKEN_ENV = "LAB_DATASETS_TOKEN_FILE"  # noqa: S105 -- the name of a variable naming a file
DOCUMENT_LIMIT = 256 << 20  # the most a listing or a manifest may be (50,000 files' manifest: ~8 MB)


# -- the store, read-only ------------------------------------------------------------------------------------------
class Source(Protocol):
    address: str

    def versions(self, name: str) -> dict[str, str]:
        """The versions of `name` in the store, each with a tag that changes when its manifest does."""
        ...

    def manifest(self, name: str, version: str) -> bytes: ...

    def blob(self, name: str, sha256: str, handle: Any, offset: int) -> None:
        """Write the blob's bytes from `offset` on into `handle`."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class FolderSource:
    root: Path

    @property
    def address(self) -> str:
        return str(self.root)

    def versions(self, name: str) -> dict[str, str]:
        folder = self.root / name / "versions"
        found: dict[str, str] = {}
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(folder):
                if entry.name.endswith(".json") and entry.is_file():
                    stat = entry.stat()
                    found[entry.name[: -len(".json")]] = f"{stat.st_size}-{stat.st_mtime_ns}"
        return found

    def manifest(self, name: str, version: str) -> bytes:
        return (self.root / name / "versions" / f"{version}.json").read_bytes()

    def close(self) -> None:
        return

    def blob(self, name: str, sha256: str, handle: Any, offset: int) -> None:
        with (self.root / name / "blobs" / sha256).open("rb") as source:
            source.seek(offset)
            shutil.copyfileobj(source, handle, CHUNK)


class BucketSource:
    """The bucket's `datasets/` prefix through google-cloud-storage (the worker's service account reads it)."""

    def __init__(self, bucket: str, prefix: str) -> None:
        from google.cloud import storage

        self.address = f"gs://{bucket}/{prefix}".rstrip("/")
        self.prefix = prefix.strip("/")
        self.bucket = storage.Client().bucket(bucket)

    def close(self) -> None:
        self.bucket.client.close()

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def versions(self, name: str) -> dict[str, str]:
        start = self._key(name, "versions") + "/"
        found: dict[str, str] = {}
        for blob in self.bucket.client.list_blobs(self.bucket, prefix=start):
            rest = blob.name[len(start) :]
            if rest.endswith(".json") and "/" not in rest:
                found[rest[: -len(".json")]] = f"{blob.generation}-{blob.size}"
        return found

    def manifest(self, name: str, version: str) -> bytes:
        return self.bucket.blob(self._key(name, "versions", f"{version}.json")).download_as_bytes()

    def blob(self, name: str, sha256: str, handle: Any, offset: int) -> None:
        blob = self.bucket.blob(self._key(name, "blobs", sha256))
        blob.download_to_file(handle, start=offset or None, checksum=None)


class HttpSource:
    """The tracker's dataset server (toolkit.data.serve): one kept-alive connection per thread."""

    def __init__(self, url: str, token_file: Path | None = None) -> None:
        parts = urlsplit(url)
        self.address = url.rstrip("/")
        self.token_file = token_file or Path(os.environ.get(TOKEN_ENV, "").strip() or TOKEN_FILE)
        token = _read_token(self.token_file)
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.base = parts.path.rstrip("/")
        self.local = threading.local()
        self.opened: list[Any] = []  # every thread's connection, closed by close()

    def _get(self, path: str, headers: dict[str, str] | None = None) -> Any:
        import http.client

        for attempt in (1, 2):  # a kept-alive connection the server closed is opened again once
            connection = getattr(self.local, "connection", None)
            if connection is None:
                connection = http.client.HTTPConnection(self.host, self.port, timeout=HTTP_TIMEOUT_S)
                self.local.connection = connection
                self.opened.append(connection)
            try:
                connection.request("GET", self.base + path, headers={**self.auth, **(headers or {})})
                response = connection.getresponse()
            except (ConnectionError, http.client.HTTPException, OSError):
                connection.close()
                self.local.connection = None
                if attempt == 2:
                    raise
                continue
            if response.status == 404:
                response.read()
                raise FileNotFoundError(path)
            if response.status in (401, 403):
                response.read()
                held = "the token in" if self.auth else "no token at"
                raise LabError(
                    f"the dataset server {self.address} refused this host (HTTP {response.status}): {held}"
                    f" {self.token_file} is not the stack's datasets token",
                    hint="run `lab up` to write it again",
                )
            if response.status not in (200, 206):
                response.read()
                raise OSError(f"{self.address}{path} answered HTTP {response.status}")
            return response
        raise AssertionError("unreachable")

    def close(self) -> None:
        for connection in self.opened:
            connection.close()

    def _document(self, path: str) -> bytes:
        data = self._get(path).read(DOCUMENT_LIMIT + 1)
        if len(data) > DOCUMENT_LIMIT:
            raise OSError(f"{self.address}{path} is larger than {DOCUMENT_LIMIT >> 20} MiB")
        return bytes(data)

    def versions(self, name: str) -> dict[str, str]:
        try:
            listed = json.loads(self._document(f"/{name}/versions/"))
        except FileNotFoundError:
            return {}
        return listed  # type: ignore[no-any-return]  # checked by resolve (check_listed)

    def manifest(self, name: str, version: str) -> bytes:
        return self._document(f"/{name}/versions/{version}.json")

    def blob(self, name: str, sha256: str, handle: Any, offset: int) -> None:
        response = self._get(f"/{name}/blobs/{sha256}", {"Range": f"bytes={offset}-"} if offset else None)
        if offset and response.status != 206:
            handle.seek(0)
            handle.truncate()
        try:
            shutil.copyfileobj(response, handle, CHUNK)
        except BaseException:  # a body left half read: this connection cannot carry another request
            self.local.connection.close()
            self.local.connection = None
            raise


def _read_token(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""  # the server's 401 says which file this host lacks


def source(address: str, token_file: Path | None = None) -> Source:
    """The store at `address` (see the module's doc); `token_file` holds the tracker server's token."""
    if address.startswith("gs://"):
        bucket, _, prefix = address[len("gs://") :].partition("/")
        return BucketSource(bucket, prefix or "datasets")
    if address.startswith(("http://", "https://")):
        return HttpSource(address, token_file)
    path = Path(address[len("file://") :] if address.startswith("file://") else address)
    if not path.is_absolute():
        raise LabError(f"the dataset store {address!r} is not an absolute folder, gs:// or http:// address")
    return FolderSource(path)


# -- what this host keeps -----------------------------------------------------------------------------------------
@dataclass
class Synced:
    """One dataset as a sync left it."""

    name: str
    version: str
    path: Path
    files: int
    bytes: int
    fetched_files: int = 0
    fetched_bytes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "path": str(self.path)}


def state_dir(root: Path) -> Path:
    return root / STATE


def verified_file(root: Path, name: str, version: str) -> Path:
    """What syncs recorded of a version's files: {"complete": bool, "files": {path: [size, mtime_ns, sha256]}}."""
    return state_dir(root) / name / f"{version}.json"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, document: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document, separators=(",", ":")))
    temporary.replace(path)


@contextlib.contextmanager
def _locked(root: Path, name: str) -> Iterator[None]:
    """One sync of a dataset at a time on this host (a configure-time sync and a sweep's may overlap)."""
    lock = state_dir(root) / name / ".lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def resolve(store: Source, ref: str, cache: Path | None = None) -> Manifest:
    """The manifest of `NAME@VERSION`, or of NAME's newest version; a one-line error naming what is missing.
    Manifests are cached under `cache` by version and tag (a version's manifest read once per change)."""
    name, version = parse_ref(ref)
    try:
        listed = store.versions(name)
    except LabError:
        raise
    except Exception as exc:
        raise LabError(f"cannot read the dataset store {store.address}: {_reason(exc)}") from None
    versions = check_listed(listed, name, store.address)  # each becomes a folder and a file name here
    if not versions:
        raise LabError(f"dataset {name} is not in the store {store.address}", hint="push it with `lab data push`")
    if version is not None and version not in versions:
        known = ", ".join(sorted(versions))
        raise LabError(f"dataset {name}@{version} is not in the store {store.address} (versions: {known})")
    wanted = [version] if version is not None else sorted(versions)
    manifests = [_manifest(store, name, v, versions[v], cache) for v in wanted]
    return max(manifests, key=lambda m: (parse_time(m.pushed_at), m.version))


def _manifest(store: Source, name: str, version: str, tag: str, cache: Path | None) -> Manifest:
    kept = cache / name / "manifests" / f"{version}.json" if cache else None
    if kept is not None:
        document = _read_json(kept)
        if isinstance(document, dict) and document.get("tag") == tag:
            return _cached(document, name, version, kept)
    try:
        text = store.manifest(name, version)
    except Exception as exc:
        raise LabError(f"cannot read {name}@{version}'s manifest from {store.address}: {_reason(exc)}") from None
    manifest = Manifest.load(text, where=f"{name}@{version}'s manifest in {store.address}")
    if (manifest.name, manifest.version) != (name, version):
        raise LabError(f"{name}@{version}'s manifest in {store.address} describes {manifest.ref}")
    if kept is not None:  # compact, and read back without checking again: 50,000 entries in ~0.1 s
        files = [[e.path, e.size, e.sha256] for e in manifest.files]
        _write_json(kept, {"tag": tag, "manifest": {**manifest.to_dict(), "files": files}})
    return manifest


def _cached(document: dict[str, Any], name: str, version: str, kept: Path) -> Manifest:
    """A manifest as this host kept it, checked again as one from the store (Manifest.from_dict): the cache is a
    file on disk, and whatever wrote it there is not trusted with paths."""
    where = f"the cached manifest {kept}"
    hint = f"remove it (something other than a sync wrote it); the next sync reads {name}@{version} again"
    try:
        manifest = Manifest.from_rows(document.get("manifest"), where=where)
    except LabError as exc:
        raise LabError(exc.message, hint=hint) from None
    if (manifest.name, manifest.version) != (name, version):
        raise LabError(f"{where} describes {manifest.ref}", hint=hint)
    return manifest


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)  # noqa: PTH116 -- 50,000 of them: a Path each would cost more than the stat
    except OSError:
        return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


Progress = Callable[[int], None]  # told how many more bytes arrived


class _Sync:
    def __init__(self, store: Source, manifest: Manifest, root: Path, threads: int, progress: Progress | None) -> None:
        self.store, self.manifest, self.root = store, manifest, root
        self.folder = root / manifest.name / manifest.version
        self.partial = state_dir(root) / "partial" / manifest.name
        self.threads, self.progress = threads, progress
        self.sizes = {entry.sha256: entry.size for entry in manifest.files}  # one size per blob (Manifest checks)
        self.record: dict[str, list[Any]] = {}
        self.lock = threading.Lock()
        self.fetched_files = self.fetched_bytes = 0

    def run(self, verify_all: bool) -> Synced:
        started = time.monotonic()
        kept = _read_json(verified_file(self.root, *self._id()))
        previous = kept.get("files", {}) if isinstance(kept, dict) and not verify_all else {}
        missing: dict[str, list[str]] = {}  # sha256 -> the paths that need those bytes
        suspects = []
        folder = str(self.folder)
        for entry in self.manifest.files:
            stat = _stat(f"{folder}/{entry.path}")  # os.stat on a string: pathlib costs more than the stat
            known = previous.get(entry.path)
            if stat is None or stat.st_size != entry.size:
                missing.setdefault(entry.sha256, []).append(entry.path)
            elif known == [stat.st_size, stat.st_mtime_ns, entry.sha256]:
                self.record[entry.path] = known
            else:
                suspects.append(entry)
        if suspects:  # present with the right size but not verified as they are now: hash them
            with ThreadPoolExecutor(self.threads) as pool:
                for entry, ok in zip(suspects, pool.map(self._verify, suspects), strict=True):
                    if not ok:
                        missing.setdefault(entry.sha256, []).append(entry.path)
        try:
            if missing:
                self.partial.mkdir(parents=True, exist_ok=True)
                with ThreadPoolExecutor(self.threads) as pool:
                    list(pool.map(self._fetch, missing.items()))
        finally:  # what was verified is kept, also when interrupted: a resumed sync does not hash it again
            complete = len(self.record) == len(self.manifest.files)
            if missing or suspects or not (isinstance(kept, dict) and kept.get("complete")) or not complete:
                _write_json(verified_file(self.root, *self._id()), {"complete": complete, "files": self.record})
        return Synced(
            self.manifest.name,
            self.manifest.version,
            self.folder,
            len(self.manifest.files),
            self.manifest.bytes,
            self.fetched_files,
            self.fetched_bytes,
            round(time.monotonic() - started, 3),
        )

    def _id(self) -> tuple[str, str]:
        return self.manifest.name, self.manifest.version

    def _note(self, path: str, target: Path, sha256: str) -> None:
        stat = target.stat()
        with self.lock:
            self.record[path] = [stat.st_size, stat.st_mtime_ns, sha256]

    def _verify(self, entry: Any) -> bool:
        target = self.folder / entry.path
        if _sha256(target) != entry.sha256:
            return False
        self._note(entry.path, target, entry.sha256)
        return True

    def _fetch(self, item: tuple[str, list[str]]) -> None:
        sha256, paths = item
        partial = self.partial / sha256
        got = self._download(sha256, partial, paths[0])
        first = self.folder / paths[0]
        first.parent.mkdir(parents=True, exist_ok=True)
        for other in paths[1:]:  # the same bytes at several paths: fetched once
            (self.folder / other).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(partial, self.folder / other)
            self._note(other, self.folder / other, sha256)
        partial.replace(first)
        self._note(paths[0], first, sha256)
        with self.lock:
            self.fetched_files += len(paths)
            self.fetched_bytes += got

    def _download(self, sha256: str, partial: Path, path: str) -> int:
        """The blob into `partial`, finished from what an interrupted sync left there; checked, else fetched
        whole once more; the bytes that arrived. Never more than the manifest's size is written."""
        name = self.manifest.name
        size = self.sizes[sha256]
        arrived = 0
        for attempt in (1, 2):
            offset = partial.stat().st_size if partial.exists() and attempt == 1 else 0
            if offset > size:  # left by something else than this sync: start over
                partial.unlink()
                offset = 0
            try:
                with partial.open("ab" if offset else "wb") as handle:
                    self.store.blob(name, sha256, _Counting(handle, self.progress, size), offset)
            except _TooLarge:
                partial.unlink(missing_ok=True)
                raise LabError(
                    f"{name}'s file {path} from {self.store.address} is larger than the {size} bytes its manifest"
                    " declares; refused",
                    hint="the store is damaged or is not the lab's: push the dataset again",
                ) from None
            except LabError:
                raise
            except FileNotFoundError:
                raise LabError(f"{name}'s file {sha256[:12]} is missing from the store {self.store.address}") from None
            except OSError as exc:
                raise LabError(f"fetching {name} from {self.store.address} failed: {_reason(exc)}") from None
            except Exception as exc:  # the bucket client's errors
                raise LabError(f"fetching {name} from {self.store.address} failed: {_reason(exc)}") from None
            arrived += partial.stat().st_size - offset
            if _sha256(partial) == sha256:
                return arrived
            partial.unlink()
        raise LabError(f"{name}'s file {sha256[:12]} from {self.store.address} does not match its sha256 twice")


class _TooLarge(Exception):
    """More bytes arrived than the manifest declares for the file."""


class _Counting:
    """A file handle that tells `progress` how many bytes were written, and refuses to grow past `limit` bytes."""

    def __init__(self, handle: Any, progress: Progress | None, limit: int) -> None:
        self.handle, self.progress, self.limit = handle, progress, limit

    def write(self, data: bytes) -> int:
        if self.handle.tell() + len(data) > self.limit:
            raise _TooLarge
        written = self.handle.write(data)
        if self.progress is not None:
            self.progress(len(data))
        return written

    def seek(self, *args: Any) -> int:
        return self.handle.seek(*args)

    def tell(self) -> int:
        return self.handle.tell()

    def truncate(self, *args: Any) -> int:
        return self.handle.truncate(*args)

    def flush(self) -> None:
        self.handle.flush()


def sync(
    address: str,
    refs: Sequence[str],
    root: Path,
    *,
    threads: int = THREADS,
    verify_all: bool = False,
    progress: Progress | None = None,
    token_file: Path | None = None,
) -> list[Synced]:
    """Each of `refs` (`NAME` or `NAME@VERSION`) materialized under `root/NAME/VERSION`, checked file by file.
    Every ref is resolved before anything is fetched: one missing is a one-line error naming it."""
    store = source(address, token_file)
    try:
        cache = state_dir(root)
        manifests = [resolve(store, ref, cache) for ref in refs]
        done = []
        for manifest in manifests:
            with _locked(root, manifest.name):
                done.append(_Sync(store, manifest, root, threads, progress).run(verify_all))
        return done
    finally:
        store.close()


def check(address: str, refs: Sequence[str], token_file: Path | None = None) -> list[str]:
    """`NAME@VERSION` of each ref as the store has it now (the newest where none is named); a one-line error
    naming the first that is not there."""
    store = source(address, token_file)
    try:
        return [resolve(store, ref).ref for ref in refs]
    finally:
        store.close()


# -- the command line -----------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit.data.fetch", description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="the store's address: a folder, gs://BUCKET/datasets, http://")
    parser.add_argument("--root", help="LAB_DATA: where the datasets go (default: $LAB_DATA)")
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument(
        "--token-file", type=Path, help=f"the dataset server's token (default: ${TOKEN_ENV}, {TOKEN_FILE})"
    )
    parser.add_argument("--verify", action="store_true", help="hash every file again, whatever was recorded")
    parser.add_argument("--check", action="store_true", help="only say which versions the store has")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("refs", nargs="+", metavar="NAME[@VERSION]")
    args = parser.parse_args(argv)
    try:
        if args.check:
            found: Any = check(args.store, args.refs, args.token_file)
        else:
            root = args.root or os.environ.get("LAB_DATA", "").strip()
            if not root:
                raise LabError("no folder for the datasets", hint="pass --root or set LAB_DATA")
            found = [
                s.to_dict()
                for s in sync(
                    args.store,
                    args.refs,
                    Path(root),
                    threads=args.threads,
                    verify_all=args.verify,
                    token_file=args.token_file,
                )
            ]
    except LabError as exc:
        print(exc.one_line(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(found))
    else:
        for item in found:
            if isinstance(item, str):
                print(item)
            else:
                print(
                    f"{item['name']}@{item['version']}: {item['files']} files, {item['bytes']} bytes in {item['path']}"
                    f" ({item['fetched_files']} fetched, {item['seconds']:.2f} s)"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
