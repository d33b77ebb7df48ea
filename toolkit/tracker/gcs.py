"""Backups in the lab's bucket: upload verified against the local checksum, download for a restore.

Objects live under gs://<bucket>/backups/<stack>/<backup id>/<file>. google-cloud-storage is imported
here only, when a bucket is configured.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import time
from pathlib import Path
from typing import Any

from toolkit.errors import LabError
from toolkit.tracker import backups

PREFIX = "backups"
# A backup id as toolkit.tracker.backups.new_id makes it; anything else read from a bucket is not a backup of ours.
BACKUP_ID = re.compile(r"^\d{8}T\d{6}\.\d{6}Z$")
POLL_S = 5.0


def _client() -> Any:
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
    bucket = _client().bucket(bucket_name)
    prefix = backup_prefix(stack, backup.manifest.id)
    try:
        for name in [f.name for f in backup.manifest.files] + [backups.MANIFEST]:
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
    that are not backup ids are left out: they never become paths here."""
    prefix = backup_prefix(stack)
    try:
        names = [b.name for b in _client().list_blobs(bucket_name, prefix=prefix)]
    except Exception as exc:
        raise LabError(f"cannot list gs://{bucket_name}/{prefix}: {exc}") from None
    found = {n.removeprefix(prefix).split("/")[0] for n in names if n.endswith("/" + backups.MANIFEST)}
    return sorted((i for i in found if BACKUP_ID.match(i)), reverse=True)


def manifest_of(bucket_name: str, stack: str, backup_id: str) -> backups.Manifest:
    blob = _client().bucket(bucket_name).blob(backup_prefix(stack, backup_id) + backups.MANIFEST)
    try:
        return backups.Manifest.from_json(blob.download_as_text())
    except (ValueError, TypeError, KeyError) as exc:
        raise LabError(f"the manifest of backup {backup_id} in gs://{bucket_name} is damaged ({exc})") from None
    except Exception as exc:
        raise LabError(f"cannot read the manifest of backup {backup_id} in gs://{bucket_name}: {exc}") from None


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
            manifest = manifest_of(bucket_name, stack, backup_id)
            if manifest.reason == reason and manifest.created_at >= since:
                return backup_id
        if time.monotonic() > deadline:
            raise LabError(
                f"no {reason} backup reached gs://{bucket_name}/{backup_prefix(stack)} within {timeout:g} s",
                hint="the tracker's lab-final-backup.service did not finish: see its journal after `lab up`",
            )
        time.sleep(poll)


def download(bucket_name: str, stack: str, backups_dir: Path, backup_id: str | None = None) -> backups.Backup:
    """Fetch a backup (the newest complete one unless named) into the local backups folder, verified."""
    client = _client()
    try:
        names = [b.name for b in client.list_blobs(bucket_name, prefix=backup_prefix(stack))]
    except Exception as exc:
        raise LabError(f"cannot list gs://{bucket_name}/{backup_prefix(stack)}: {exc}") from None
    complete = sorted({n.split("/")[2] for n in names if n.endswith("/" + backups.MANIFEST)}, reverse=True)
    if backup_id:
        complete = [c for c in complete if c.startswith(backup_id)]
    if not complete:
        which = f"backup {backup_id!r}" if backup_id else "complete backup"
        raise LabError(f"no {which} in gs://{bucket_name}/{backup_prefix(stack)}")
    chosen = complete[0]
    target = backups_dir / chosen
    if (target / backups.MANIFEST).exists():
        return backups.Backup(target, backups.verify(target))
    incoming = backups_dir / f"{backups.INCOMING}{chosen}"
    incoming.mkdir(parents=True, exist_ok=True)
    bucket = client.bucket(bucket_name)
    prefix = backup_prefix(stack, chosen)
    try:
        for name in sorted(n for n in names if n.startswith(prefix)):
            bucket.blob(name).download_to_filename(str(incoming / name.removeprefix(prefix)))
    except Exception as exc:
        raise LabError(f"download of gs://{bucket_name}/{prefix} failed: {exc}") from None
    backups.verify(incoming)
    incoming.rename(target)
    return backups.Backup(target, backups.read_manifest(target))


def delete_bucket(bucket_name: str) -> int:
    """Delete every object version in the bucket, then the bucket (`lab down --destroy-data`). Returns the
    number of object versions deleted; a bucket that is already gone is not an error."""
    from google.api_core import exceptions as gexc

    client = _client()
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
