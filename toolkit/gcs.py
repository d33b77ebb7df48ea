"""Backups in the lab's bucket: upload verified against the local checksum, download for a restore.

Objects live under gs://<bucket>/backups/<stack>/<backup id>/<file>. google-cloud-storage is imported
here only, when a bucket is configured.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from toolkit import backups
from toolkit.errors import LabError

PREFIX = "backups"


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
