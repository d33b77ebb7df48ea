"""Backups in the lab's bucket: upload verified against the local checksum, download for a restore.

Objects live under gs://<bucket>/backups/<stack>/<backup id>/<file>. google-cloud-storage is imported
here only, when a bucket is configured.

Whoever can write the bucket (a worker, today) can put anything there, so nothing read from it becomes a
path unchecked: a backup id is a timestamp as `backups.new_id` writes it (others are never the newest), and
a download fetches exactly the files its manifest names (which `backups.Manifest` limits to the tracker's
DBs and the artifacts tar), whatever other objects lie beside them. A manifest that does not read is
skipped with a warning.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import shutil
import time
from pathlib import Path
from typing import Any

from toolkit.errors import LabError
from toolkit.tracker import backups

PREFIX = "backups"
POLL_S = 5.0


class DamagedManifest(LabError):
    """A manifest in the bucket that does not read: the backup is skipped, the bucket is still there."""


def storage_client() -> Any:
    try:
        from google.cloud import storage
    except ImportError:
        raise LabError(
            "a bucket is configured but google-cloud-storage is not installed",
            hint="pip install -e '.[local]' (or '.[gcp]')",
        ) from None
    try:
        return storage.Client()
    except Exception as exc:  # google.auth raises several types for missing credentials
        raise LabError(
            f"cannot reach Google Cloud Storage: {exc}", hint="gcloud auth application-default login"
        ) from None


def _crc32c(path: Path) -> str:
    import google_crc32c

    checksum = google_crc32c.Checksum()
    with path.open("rb") as handle:
        while chunk := handle.read(backups.HASH_CHUNK):
            checksum.update(chunk)
    return base64.b64encode(checksum.digest()).decode()


def backup_prefix(stack: str, backup_id: str = "") -> str:
    return f"{PREFIX}/{stack}/{backup_id}/" if backup_id else f"{PREFIX}/{stack}/"


def upload(backup: backups.Backup, bucket_name: str, stack: str) -> str:
    """Upload a backup and check each object's CRC32C against the local file; the manifest goes last,
    so a backup in the bucket without its manifest is an incomplete one. Returns its gs:// URL."""
    bucket = storage_client().bucket(bucket_name)
    prefix = backup_prefix(stack, backup.manifest.id)
    try:
        for name in [*backup.manifest.names, backups.MANIFEST]:
            local = backup.path / name
            blob = bucket.blob(prefix + name)
            blob.upload_from_filename(str(local), checksum="crc32c")
            blob.reload()
            if blob.crc32c != _crc32c(local) or blob.size != local.stat().st_size:
                raise LabError(f"gs://{bucket_name}/{prefix}{name} does not match the local file after upload")
    except LabError:
        raise
    except Exception as exc:
        raise LabError(f"upload to gs://{bucket_name}/{prefix} failed: {type(exc).__name__}: {exc}") from None
    return f"gs://{bucket_name}/{prefix}"


def complete_ids(bucket_name: str, stack: str) -> list[str]:
    """The ids of the stack's complete backups in the bucket (those with their manifest), newest first. Names
    that are not backup ids (or are dated in the future) are left out, with a warning: they never become
    paths here, nor the newest backup."""
    prefix = backup_prefix(stack)
    try:
        names = [b.name for b in storage_client().list_blobs(bucket_name, prefix=prefix)]
    except Exception as exc:
        raise LabError(f"cannot list gs://{bucket_name}/{prefix}: {exc}") from None
    found = {
        parts[0] for parts in (n.removeprefix(prefix).split("/") for n in names) if parts[1:] == [backups.MANIFEST]
    }
    for problem, backup_id in [(backups.id_problem(i), i) for i in found]:
        if problem:
            backups.warn(f"skipping gs://{bucket_name}/{prefix}{backup_id[:60]}/: {problem}")
            found.discard(backup_id)
    return sorted(found, reverse=True)


def manifest_of(bucket_name: str, stack: str, backup_id: str) -> backups.Manifest:
    """The manifest of a backup in the bucket; DamagedManifest when it does not read or is another's."""
    blob = storage_client().bucket(bucket_name).blob(backup_prefix(stack, backup_id) + backups.MANIFEST)
    try:
        text = blob.download_as_bytes()
    except Exception as exc:
        raise LabError(f"cannot read the manifest of backup {backup_id} in gs://{bucket_name}: {exc}") from None
    try:
        manifest = backups.Manifest.from_json(text)
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise DamagedManifest(f"the manifest of backup {backup_id} in gs://{bucket_name} is damaged ({exc})") from None
    if manifest.id != backup_id:
        raise DamagedManifest(f"the manifest of backup {backup_id} in gs://{bucket_name} is that of {manifest.id}")
    return manifest


def wait_for_backup(
    bucket_name: str, stack: str, *, since: dt.datetime, reason: str, timeout: float, poll: float = POLL_S
) -> str:
    """Wait until the bucket holds a complete backup of the stack made for `reason` at or after `since`;
    its id. A LabError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    oldest = backups.new_id(since)
    while True:
        for backup_id in complete_ids(bucket_name, stack):
            if backup_id < oldest:
                break  # newest first: the rest are older still
            try:
                manifest = manifest_of(bucket_name, stack, backup_id)
            except DamagedManifest as exc:
                backups.warn(f"skipping it: {exc.one_line()}")
                continue
            if manifest.reason == reason and manifest.created_at >= since:
                return backup_id
        if time.monotonic() > deadline:
            raise LabError(
                f"no {reason} backup reached gs://{bucket_name}/{backup_prefix(stack)} within {timeout:g} s",
                hint="the tracker's lab-final-backup.service did not finish: see its journal after `lab up`",
            )
        time.sleep(poll)


def download(
    bucket_name: str,
    stack: str,
    backups_dir: Path,
    backup_id: str | None = None,
    check: str = backups.FULL_CHECK,
) -> backups.Backup:
    """Fetch a backup (the newest complete one whose manifest reads, unless named) into the local backups
    folder, flushed to disk, then verified (with `check`: the full integrity check unless told)."""
    client = storage_client()
    ids = complete_ids(bucket_name, stack)
    if backup_id:
        ids = [i for i in ids if i.startswith(backup_id)]
    chosen: backups.Manifest | None = None
    for candidate in ids:
        try:
            chosen = manifest_of(bucket_name, stack, candidate)
        except DamagedManifest as exc:
            if backup_id:
                raise
            backups.warn(f"skipping it: {exc.one_line()}")
            continue
        break
    if chosen is None:
        which = f"backup {backup_id!r}" if backup_id else "complete backup"
        raise LabError(f"no {which} in gs://{bucket_name}/{backup_prefix(stack)}")
    target = backups_dir / chosen.id
    if (target / backups.MANIFEST).exists():
        return backups.Backup(target, backups.verify(target, check))
    backups_dir.mkdir(parents=True, exist_ok=True)
    backups.clear_incoming(backups_dir)
    incoming = backups.incoming_folder(backups_dir, chosen.id)
    incoming.mkdir()
    bucket = client.bucket(bucket_name)
    prefix = backup_prefix(stack, chosen.id)
    try:
        try:
            # The names come from the checked manifest, never from the bucket's listing.
            for name in [*chosen.names, backups.MANIFEST]:
                with (incoming / name).open("wb") as handle:
                    bucket.blob(prefix + name).download_to_file(handle)
                    handle.flush()
                    os.fsync(handle.fileno())
        except Exception as exc:
            raise LabError(f"download of gs://{bucket_name}/{prefix} failed: {exc}") from None
        backups.fsync_tree(incoming)
        backups.verify(incoming, check)
        incoming.rename(target)
        backups.fsync(backups_dir)
    finally:
        if incoming.exists():
            shutil.rmtree(incoming, ignore_errors=True)
    return backups.Backup(target, backups.read_manifest(target))


def delete_bucket(bucket_name: str) -> int:
    """Delete every object version in the bucket, then the bucket (`lab down --destroy-data`). Returns the
    number of object versions deleted; a bucket that is already gone is not an error."""
    from google.api_core import exceptions as gexc

    client = storage_client()
    deleted = 0
    try:
        for blob in client.list_blobs(bucket_name, versions=True):
            blob.bucket.delete_blob(blob.name, generation=blob.generation)
            deleted += 1
        client.bucket(bucket_name).delete()
    except gexc.NotFound:
        return deleted
    except gexc.GoogleAPICallError as exc:
        raise LabError(f"could not delete gs://{bucket_name}: {exc.message}") from None
    return deleted
