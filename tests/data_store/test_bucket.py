"""`lab data` on a lab with a bucket: the store is gs://BUCKET/datasets/, through the real google-cloud-storage
client against gcp-storage-emulator (tests/conftest.py's `emulator`).

The emulator answers the JSON API as GCS documents it: objects.insert, objects.list with prefix and delimiter,
objects.compose (https://cloud.google.com/storage/docs/json_api/v1/objects/compose: the composite's bytes are
its sources' in order, with a CRC32C and no MD5), objects.delete. A file of PARALLEL_FROM bytes or more goes up
in parts joined by compose, as gcloud's parallel composite uploads do
(https://cloud.google.com/storage/docs/parallel-composite-uploads).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from toolkit.data import bucket as bucket_store

storage = pytest.importorskip("google.cloud.storage")

BUCKET = "lab-data-bucket"
PREFIX = "datasets/images"


@pytest.fixture
def env(emulator: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {"STORAGE_EMULATOR_HOST": emulator, "GOOGLE_CLOUD_PROJECT": "test-project"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    client = storage.Client()
    if client.bucket(BUCKET).exists():
        for blob in client.list_blobs(BUCKET):
            blob.delete()
    else:
        client.create_bucket(BUCKET)
    return values


@pytest.fixture
def stack(tmp_path: Path) -> Path:
    path = tmp_path / "Pulumi.withbucket.yaml"
    path.write_text(f"config:\n  lab:target: local\n  lab:bucketName: {BUCKET}\n")
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    (folder / "train").mkdir(parents=True)
    # larger than PARALLEL_FROM: it goes up in parts (16 MiB each, the last shorter)
    (folder / "train.tar").write_bytes(os.urandom(bucket_store.PARALLEL_FROM + 5 * 1024 * 1024 + 17))
    for i in range(20):
        (folder / "train" / f"{i:03d}.png").write_bytes(f"image {i}".encode() * 100)
    return folder


def objects() -> dict[str, object]:
    return {b.name: b for b in storage.Client().list_blobs(BUCKET)}


def test_push_sends_each_file_once_in_parts_when_large_and_nothing_the_second_time(lab, env, stack, images):
    started = time.monotonic()
    first = lab("data", "push", str(images), "--name", "images", "--stack", str(stack), "--json", env=env)
    seconds = time.monotonic() - started
    assert first.code == 0, first.err
    pushed = json.loads(first.out)
    print(f"first push of {pushed['bytes'] / 1e6:.1f} MB: {seconds:.1f} s ({pushed['bytes'] / 1e6 / seconds:.0f} MB/s)")
    assert pushed["store"] == f"gs://{BUCKET}/datasets"
    assert (pushed["files"], pushed["uploaded_files"], pushed["already_there"]) == (21, 21, False)
    found = objects()
    generations = {name: blob.generation for name, blob in found.items()}  # a download resets them
    manifest = json.loads(found[f"{PREFIX}/versions/{pushed['version']}.json"].download_as_bytes())
    assert len(manifest["files"]) == 21 and manifest["bytes"] == pushed["bytes"]
    for entry in manifest["files"]:
        blob = found[f"{PREFIX}/blobs/{entry['sha256']}"]
        assert blob.size == entry["size"]
    big = next(e for e in manifest["files"] if e["path"] == "train.tar")
    assert hashlib.sha256(found[f"{PREFIX}/blobs/{big['sha256']}"].download_as_bytes()).hexdigest() == big["sha256"]
    assert not [name for name in found if "/parts/" in name], "the parts are deleted once the blob is whole"

    again = lab("data", "push", str(images), "--name", "images", "--stack", str(stack), env=env)
    assert again.code == 0 and again.out.startswith("nothing to upload: images@"), again
    assert {n: b.generation for n, b in objects().items()} == generations
    # another version of the same files writes its manifest only
    named = lab("data", "push", str(images), "--name", "images", "--version", "v2", "--stack", str(stack), env=env)
    assert named.code == 0 and "nothing to upload, every file was already there" in named.out, named
    now = {n: b.generation for n, b in objects().items()}
    assert set(now) - set(generations) == {f"{PREFIX}/versions/v2.json"}
    assert all(now[name] == generation for name, generation in generations.items())


def test_a_blob_of_the_right_name_but_another_size_is_sent_again(lab, env, stack, tmp_path):
    folder = tmp_path / "small"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"abc" * 1000)
    digest = hashlib.sha256(b"abc" * 1000).hexdigest()
    storage.Client().bucket(BUCKET).blob(f"datasets/small/blobs/{digest}").upload_from_string(b"abc")  # cut short
    ran = lab("data", "push", str(folder), "--name", "small", "--stack", str(stack), "--json", env=env)
    assert ran.code == 0 and json.loads(ran.out)["uploaded_files"] == 1, ran
    assert objects()[f"datasets/small/blobs/{digest}"].download_as_bytes() == b"abc" * 1000


def test_ls_and_rm_in_the_bucket(lab, env, stack, tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "shared").write_text("in both versions")
    (folder / "old").write_text("v1 only")
    assert (
        lab("data", "push", str(folder), "--name", "mnist", "--version", "v1", "--stack", str(stack), env=env).code == 0
    )
    (folder / "old").unlink()
    (folder / "new").write_text("v2 only")
    assert (
        lab("data", "push", str(folder), "--name", "mnist", "--version", "v2", "--stack", str(stack), env=env).code == 0
    )
    listed = json.loads(lab("data", "ls", "--stack", str(stack), "--json", env=env).out)
    assert listed["store"] == f"gs://{BUCKET}/datasets"
    assert [(d["name"], [v["version"] for v in d["versions"]]) for d in listed["datasets"]] == [("mnist", ["v2", "v1"])]

    gone = lab("data", "rm", "mnist@v1", "--yes", "--stack", str(stack), env=env)
    assert gone.code == 0, gone.err
    left = sorted(name.removeprefix("datasets/mnist/") for name in objects())
    sha = {text: hashlib.sha256(text.encode()).hexdigest() for text in ("in both versions", "v2 only")}
    assert left == sorted([f"blobs/{sha['in both versions']}", f"blobs/{sha['v2 only']}", "versions/v2.json"])
    unknown = lab("data", "rm", "mnist@v1", "--yes", "--stack", str(stack), env=env)
    assert unknown.code == 1 and f"no dataset mnist@v1 in the store (gs://{BUCKET}/datasets)" in unknown.err
    assert lab("data", "rm", "mnist", "--yes", "--stack", str(stack), env=env).code == 0
    assert objects() == {}


def test_a_file_of_many_parts_is_joined_in_rounds_of_at_most_32(env, tmp_path, monkeypatch):
    """GCS composes at most 32 sources per request: more parts are joined into intermediates first."""
    from toolkit.data import store as stores

    monkeypatch.setattr(bucket_store, "PARALLEL_FROM", 1 << 20)
    monkeypatch.setattr(bucket_store, "PART_BYTES", 64 << 10)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(70 * (64 << 10) + 3))  # 71 parts: three rounds of compose
    composed: list[int] = []
    join = bucket_store.BucketStore._join
    monkeypatch.setattr(
        bucket_store.BucketStore, "_join", lambda self, s, k: composed.append(len(s)) or join(self, s, k)
    )
    result = stores.push(bucket_store.BucketStore(BUCKET), source, "big")
    assert result.sent_files == 1
    assert composed == [32, 32, 7, 3] and max(composed) <= bucket_store.COMPOSE_MAX
    (entry,) = result.manifest.files
    stored = objects()
    assert set(stored) == {
        f"datasets/big/blobs/{entry.sha256}",
        f"datasets/big/versions/{result.manifest.version}.json",
    }
    assert stored[f"datasets/big/blobs/{entry.sha256}"].download_as_bytes() == source.read_bytes()
