"""The dataset store in the lab's bucket: gs://BUCKET/datasets/NAME/{blobs,versions}/ (toolkit.data.store).

A blob is uploaded only when no object of its name (its sha256) and size is there. Each file is read once, in
order, and its sha256 checked as it goes; what is sent is checked by the bucket's CRC32C of each request
(google-cloud-storage's `checksum="crc32c"`). A file of PARALLEL_FROM bytes or more is sent in parts, several
at once, then joined with `compose` (GCS "parallel composite uploads":
https://cloud.google.com/storage/docs/parallel-composite-uploads): the parts are separate objects under
NAME/parts/, named *PART_SUFFIX, while it runs and are deleted once the blob is whole; in the lab's versioned
bucket a lifecycle rule for that suffix (infra/bucket.py) removes their noncurrent versions after a day, and parts
an upload killed mid-way left after two. google-cloud-storage is imported here only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from toolkit.data import manifest as manifests
from toolkit.data import store as stores
from toolkit.data.manifest import FileEntry, Manifest, Progress
from toolkit.errors import LabError
from toolkit.tracker import gcs

PARALLEL_FROM = 64 << 20  # files this large or larger go up in parts
PART_BYTES = 16 << 20  # the smallest part (a part is at least this, and a file has at most MAX_PARTS of them)
MAX_PARTS = 1024
COMPOSE_MAX = 32  # sources one compose request takes (GCS's limit)
PART_SUFFIX = ".part"  # every part's name ends so, and nothing else's (the bucket's lifecycle rule matches it)
DELETE_THREADS = 16  # objects deleted at once
PART_THREADS = 8  # parts of one file sent at once (also the parts held in memory at once)
# gcp-storage-emulator (STORAGE_EMULATOR_HOST) answers one request at a time (http.server.HTTPServer, listen
# backlog 5): requests sent at once only overflow its backlog and wait for TCP to retry (500 small files took
# 6.6 s one at a time, 17.8 s eight at a time, and 5,000 stalled). Against it, one at a time.
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"


class BucketStore(stores.Store):
    """The store under gs://BUCKET/datasets/."""

    def __init__(self, bucket: str, prefix: str = stores.FOLDER) -> None:
        self.bucket_name = bucket
        self.prefix = prefix.strip("/") + "/"
        self.where = f"gs://{bucket}/{self.prefix.rstrip('/')}"
        self._bucket: Any = None
        self._lock = threading.Lock()
        emulated = bool(os.environ.get(EMULATOR_ENV))
        self.upload_threads = 1 if emulated else stores.UPLOAD_THREADS
        self.part_threads = 1 if emulated else PART_THREADS
        self.delete_threads = 1 if emulated else DELETE_THREADS

    @property
    def bucket(self) -> Any:
        with self._lock:
            if self._bucket is None:
                self._bucket = gcs.storage_client().bucket(self.bucket_name)
            return self._bucket

    def _key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    def _list(self, prefix: str, delimiter: str | None = None) -> tuple[list[Any], set[str]]:
        try:
            listing = self.bucket.client.list_blobs(self.bucket_name, prefix=prefix, delimiter=delimiter)
            found = list(listing)
            return found, set(listing.prefixes)
        except LabError:
            raise
        except Exception as exc:
            raise failed(f"cannot list gs://{self.bucket_name}/{prefix}", exc) from None

    # -- the Store's questions -----------------------------------------------------------------------------
    def names(self) -> list[str]:
        _, prefixes = self._list(self.prefix, delimiter="/")
        found = (p.removeprefix(self.prefix).rstrip("/") for p in prefixes)
        return sorted(n for n in found if manifests.NAME_PATTERN.fullmatch(n))

    def version_ids(self, name: str) -> list[str]:
        folder = self._key(name, stores.VERSIONS) + "/"
        found, _ = self._list(folder, delimiter="/")
        ids = (b.name.removeprefix(folder).removesuffix(".json") for b in found if b.name.endswith(".json"))
        return sorted(v for v in ids if manifests.VERSION_PATTERN.fullmatch(v))

    def blobs(self, name: str) -> dict[str, int]:
        folder = self._key(name, stores.BLOBS) + "/"
        found, _ = self._list(folder, delimiter="/")
        return {
            sha: int(b.size)
            for b in found
            if manifests.SHA256_PATTERN.fullmatch(sha := b.name.removeprefix(folder)) and b.size is not None
        }

    def read_manifest(self, name: str, version: str) -> Manifest:
        from google.api_core import exceptions

        key = self._key(name, stores.VERSIONS, f"{version}.json")
        try:
            text = self.bucket.blob(key).download_as_bytes()
        except exceptions.NotFound:
            raise stores.unknown(name, version, self.where) from None
        except Exception as exc:
            raise failed(f"cannot read gs://{self.bucket_name}/{key}", exc) from None
        where = f"gs://{self.bucket_name}/{key}"
        return stores.checked(Manifest.load(text, where=where), name, version, where)

    def put_manifest(self, manifest: Manifest) -> None:
        key = self._key(manifest.name, stores.VERSIONS, f"{manifest.version}.json")
        try:
            self.bucket.blob(key).upload_from_string(
                manifest.dump(), content_type="application/json", checksum="crc32c"
            )
        except Exception as exc:
            raise failed(f"cannot write gs://{self.bucket_name}/{key}", exc) from None

    def put_blobs(self, name: str, blobs: list[tuple[FileEntry, Path]], progress: Progress | None = None) -> None:
        small = [item for item in blobs if item[0].size < PARALLEL_FROM]
        large = [item for item in blobs if item[0].size >= PARALLEL_FROM]
        with ThreadPoolExecutor(max_workers=self.upload_threads) as pool:
            done = [pool.submit(self._put_small, name, entry, local, progress) for entry, local in small]
            for entry, local in large:  # one at a time, each in parallel parts
                self._put_large(name, entry, local, progress)
            for future in done:
                future.result()

    def _put_small(self, name: str, entry: FileEntry, local: Path, progress: Progress | None) -> None:
        data = local.read_bytes()
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise stores.changed(local)
        self._upload(self._key(name, stores.BLOBS, entry.sha256), data)
        if progress is not None:
            progress(len(data))

    def _upload(self, key: str, data: bytes) -> None:
        try:
            self.bucket.blob(key).upload_from_string(data, content_type="application/octet-stream", checksum="crc32c")
        except Exception as exc:
            raise failed(f"upload to gs://{self.bucket_name}/{key} failed", exc) from None

    def _put_large(self, name: str, entry: FileEntry, local: Path, progress: Progress | None) -> None:
        """Read the file once, in order (its sha256 checked as it goes), sending its parts `part_threads` at a time;
        then join them into the blob and delete them."""
        part_bytes = max(PART_BYTES, -(-entry.size // MAX_PARTS))
        parts: list[str] = []
        digest, size = hashlib.sha256(), 0
        slots = threading.Semaphore(self.part_threads)
        sent: list[Future[None]] = []

        def send(key: str, data: bytes) -> None:
            try:
                self._upload(key, data)
                if progress is not None:
                    progress(len(data))
            finally:
                slots.release()

        try:
            with ThreadPoolExecutor(max_workers=self.part_threads) as pool, local.open("rb") as source:
                while data := source.read(part_bytes):
                    digest.update(data)
                    size += len(data)
                    key = self._key(name, "parts", f"{entry.sha256}.{len(parts):05d}{PART_SUFFIX}")
                    parts.append(key)
                    slots.acquire()
                    sent.append(pool.submit(send, key, data))
                    if any(f.done() and f.exception() for f in sent):
                        break
            for future in sent:
                future.result()
            if size != entry.size or digest.hexdigest() != entry.sha256:
                raise stores.changed(local)
            self._compose(name, entry, parts)
        finally:
            self._delete_keys(parts)

    def _compose(self, name: str, entry: FileEntry, parts: list[str]) -> None:
        """Join the parts into NAME/blobs/<sha256>, COMPOSE_MAX at a time (intermediate objects for more)."""
        level, keys = 0, list(parts)
        made: list[str] = []
        try:
            while len(keys) > COMPOSE_MAX:
                level += 1
                joined = []
                for i in range(0, len(keys), COMPOSE_MAX):
                    key = self._key(name, "parts", f"{entry.sha256}.l{level}.{i // COMPOSE_MAX:05d}{PART_SUFFIX}")
                    self._join(keys[i : i + COMPOSE_MAX], key)
                    made.append(key)
                    joined.append(key)
                keys = joined
            target = self._key(name, stores.BLOBS, entry.sha256)
            blob = self._join(keys, target)
            if blob.size is not None and int(blob.size) != entry.size:
                raise LabError(f"gs://{self.bucket_name}/{target} has {blob.size} bytes, not {entry.size}")
        finally:
            self._delete_keys(made)

    def _join(self, sources: list[str], key: str) -> Any:
        bucket = self.bucket
        target = bucket.blob(key)
        target.content_type = "application/octet-stream"
        try:
            target.compose([bucket.blob(s) for s in sources])
        except Exception as exc:
            raise failed(f"cannot compose gs://{self.bucket_name}/{key}", exc) from None
        return target

    @contextlib.contextmanager
    def open_blob(self, name: str, sha256: str) -> Iterator[IO[bytes]]:
        key = self._key(name, stores.BLOBS, sha256)
        try:
            handle = self.bucket.blob(key).open("rb")
        except Exception as exc:
            raise failed(f"cannot read gs://{self.bucket_name}/{key}", exc) from None
        with handle:
            yield handle

    def get_blob(self, name: str, sha256: str, dest: Path) -> None:
        key = self._key(name, stores.BLOBS, sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(f".{dest.name}.part")
        try:
            self.bucket.blob(key).download_to_filename(str(partial), checksum="crc32c")
        except Exception as exc:
            partial.unlink(missing_ok=True)
            raise failed(f"cannot download gs://{self.bucket_name}/{key}", exc) from None
        partial.replace(dest)

    def delete_manifest(self, name: str, version: str) -> None:
        self._delete_keys([self._key(name, stores.VERSIONS, f"{version}.json")])

    def delete_blobs(self, name: str, sha256s: Iterable[str]) -> None:
        self._delete_keys([self._key(name, stores.BLOBS, sha) for sha in sha256s])

    def delete_all(self, name: str) -> None:
        versions, _ = self._list(self._key(name, stores.VERSIONS) + "/")
        self._delete_keys([b.name for b in versions])
        rest, _ = self._list(self._key(name) + "/")
        self._delete_keys([b.name for b in rest])

    def _delete_keys(self, keys: list[str]) -> None:
        """Delete objects, a missing one being fine (DELETE_THREADS requests at once)."""
        if not keys:
            return
        from google.api_core import exceptions

        def delete(key: str) -> None:
            try:
                self.bucket.blob(key).delete()
            except exceptions.NotFound:
                pass
            except Exception as exc:
                raise failed(f"cannot delete gs://{self.bucket_name}/{key}", exc) from None

        with ThreadPoolExecutor(max_workers=self.delete_threads) as pool:
            list(pool.map(delete, keys))


def failed(what: str, exc: Exception) -> LabError:
    reason = " ".join(str(exc).split())[:300] or type(exc).__name__
    return LabError(f"{what}: {reason}", hint="check the bucket, your credentials (`lab doctor`) and try again")
