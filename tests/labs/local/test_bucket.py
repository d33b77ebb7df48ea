"""Backups and artifacts in a bucket: the real google-cloud-storage client against gcp-storage-emulator."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from toolkit.tracker import backups

storage = pytest.importorskip("google.cloud.storage")

pytestmark = pytest.mark.slow  # starts labs or services: not in `pytest -m 'not slow'`

BUCKET = "lab-test-bucket"


@pytest.fixture
def bucket_env(emulator: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"STORAGE_EMULATOR_HOST": emulator, "GOOGLE_CLOUD_PROJECT": "test-project"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    client = storage.Client()
    bucket = client.bucket(BUCKET)
    if bucket.exists():
        for blob in client.list_blobs(BUCKET):
            blob.delete()
    else:
        client.create_bucket(BUCKET)
    return env


@pytest.fixture
def stack_file(tmp_path: Path) -> Path:
    path = tmp_path / "Pulumi.bkt.yaml"
    path.write_text(f"config:\n  lab:target: local\n  lab:bucketName: {BUCKET}\n")
    return path


@pytest.fixture
def bkt_state(isolated: Path, current_mlflow_db: Path) -> Path:
    root = isolated / ".lab" / "stacks" / "bkt"
    (root / "tracker").mkdir(parents=True)
    shutil.copy(current_mlflow_db, root / "tracker" / "mlflow.db")
    return root


def test_backup_is_uploaded_and_verified(lab, bucket_env, stack_file, bkt_state):
    ran = lab("backup", "--stack", str(stack_file), "--json", env=bucket_env)
    assert ran.code == 0, ran.err
    manifest = json.loads(ran.out)
    assert manifest["uploaded"] == f"gs://{BUCKET}/backups/bkt/{manifest['id']}/"
    blobs = {b.name: b for b in storage.Client().list_blobs(BUCKET)}
    local = Path(manifest["path"])
    for name in ("mlflow.db", "manifest.json"):
        blob = blobs[f"backups/bkt/{manifest['id']}/{name}"]
        assert blob.size == (local / name).stat().st_size
        assert blob.download_as_bytes() == (local / name).read_bytes()


def test_restore_from_the_bucket(lab, bucket_env, stack_file, bkt_state):
    made = json.loads(lab("backup", "--stack", str(stack_file), "--json", env=bucket_env).out)
    shutil.rmtree(bkt_state / "backups")
    (bkt_state / "tracker" / "mlflow.db").write_bytes(b"")  # a tracker DB gone bad
    ran = lab("restore", "--stack", str(stack_file), "--from-bucket", env=bucket_env)
    assert ran.code == 0, ran.err
    assert f"restored {made['id']}" in ran.out
    assert backups.sha256_of(bkt_state / "tracker" / "mlflow.db") == made["files"][0]["sha256"]
    # The bad DB it replaced was kept as a backup too.
    listed = backups.listing(bkt_state / "backups")
    assert sorted(b.manifest.reason for b in listed) == ["manual", "pre-restore"]
    # ... and uploaded: the bad DB may be all there is of some runs, and this machine may be lost next.
    kept = next(b for b in listed if b.manifest.reason == "pre-restore")
    uploaded = {b.name for b in storage.Client().list_blobs(BUCKET, prefix=f"backups/bkt/{kept.manifest.id}/")}
    assert f"backups/bkt/{kept.manifest.id}/manifest.json" in uploaded


def test_failed_upload_keeps_the_local_backup(lab, bucket_env, stack_file, bkt_state):
    storage.Client().bucket(BUCKET).delete(force=True)
    ran = lab("backup", "--stack", str(stack_file), env=bucket_env)
    assert ran.code == 1
    kept = backups.listing(bkt_state / "backups")
    assert len(kept) == 1
    backups.verify(kept[0].path)
    assert ran.err.startswith(f"error: backup {kept[0].manifest.id} is kept at {kept[0].path}, but upload to ")
    assert "failed" in ran.err


def test_up_restores_from_the_bucket_and_serves_artifacts_from_it(
    lab, bucket_env, stack_file, bkt_state, ports, tmp_path
):
    made = json.loads(lab("backup", "--stack", str(stack_file), "--json", env=bucket_env).out)
    shutil.rmtree(bkt_state / "backups")
    (bkt_state / "tracker" / "mlflow.db").unlink()
    ran = lab("up", "--stack", str(stack_file), "--no-jupyter", "--port", ports["mlflow"], env=bucket_env)
    assert ran.code == 0, ran.err
    assert f"restored backup {made['id']}" in ran.err
    mlflow = pytest.importorskip("mlflow")
    tracking = mlflow.MlflowClient(f"http://127.0.0.1:{ports['mlflow']}")
    assert len(tracking.search_runs(["1"])) == 3
    run = tracking.create_run(tracking.create_experiment("artifacts-in-bucket"))
    note = tmp_path / "note.txt"
    note.write_text("in the bucket\n")
    tracking.log_artifact(run.info.run_id, str(note))
    stored = [b.name for b in storage.Client().list_blobs(BUCKET, prefix="mlflow-artifacts/bkt/")]
    assert any(name.endswith(f"{run.info.run_id}/artifacts/note.txt") for name in stored), stored
    assert lab("down", "--stack", str(stack_file), env=bucket_env).code == 0
    assert os.environ["STORAGE_EMULATOR_HOST"] == bucket_env["STORAGE_EMULATOR_HOST"]
