"""toolkit.data.fetch: datasets from a store (a folder, the tracker's read-only server) onto this host's disk,
each file checked; toolkit.data.path in a kernel; the space file's data: key and the sweep's dataset step."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import toolkit.data as data
from tests.data_sync.conftest import TOKEN
from toolkit.data import fetch, serve
from toolkit.data.store import FolderStore, push
from toolkit.errors import LabError
from toolkit.sweeps import prepare, space
from toolkit.sweeps.place import SweepPlace

ROOT = Path(__file__).resolve().parents[2]


def make_dataset(folder: Path, count: int = 40, size: int = 3000) -> Path:
    for i in range(count):
        path = folder / f"class{i % 4}" / f"img{i:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(hashlib.sha256(str(i).encode()).digest() * (size // 32 + i))
    (folder / "dup-a.txt").write_text("same bytes\n")
    (folder / "dup-b.txt").write_text("same bytes\n")
    return folder


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def store(tmp_path: Path) -> FolderStore:
    made = FolderStore(tmp_path / "store")
    push(made, make_dataset(tmp_path / "src"), "toy")
    return made


@pytest.fixture
def served(store: FolderStore, token_file: Path):
    """The tracker's read-only dataset server over `store`, each request slowed a little and counted."""
    seen = {"now": 0, "most": 0, "ranges": 0}
    lock = threading.Lock()

    class Counting(serve.Handler):
        def do_GET(self) -> None:
            with lock:
                seen["now"] += 1
                seen["most"] = max(seen["most"], seen["now"])
                seen["ranges"] += "Range" in self.headers
            try:
                time.sleep(0.02)
                super().do_GET()
            finally:
                with lock:
                    seen["now"] -= 1

    httpd = serve.server(store.root, "127.0.0.1", 0, Counting, token=serve.read_token(token_file))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()


def test_first_sync_is_every_file_checked_and_the_second_fetches_nothing(store, tmp_path):
    root = tmp_path / "data"
    [first] = fetch.sync(str(store.root), ["toy"], root)
    assert tree(first.path) == tree(tmp_path / "src")
    assert first.fetched_files == 42 and first.files == 42 and first.path == root / "toy" / first.version
    [again] = fetch.sync(f"file://{store.root}", [f"toy@{first.version}"], root)
    assert (again.fetched_files, again.fetched_bytes) == (0, 0)
    assert not list((root / ".lab" / "partial" / "toy").iterdir())


def test_files_are_fetched_in_parallel_from_the_trackers_server(served, tmp_path):
    url, seen = served
    [synced] = fetch.sync(url, ["toy"], tmp_path / "data", threads=8)
    assert tree(synced.path) == tree(tmp_path / "src")
    assert seen["most"] >= 4, f"at most {seen['most']} requests were in flight at once"


def test_the_server_is_read_only_and_serves_only_the_store(served, store):
    import urllib.error
    import urllib.request

    url, _ = served
    (store.root.parent / "secret.txt").write_text("no")
    for path in (
        "/../secret.txt",
        "/toy/blobs/../../secret.txt",
        "/toy/blobs/abc",
        "/Toy/versions/",
        "/toy/versions/..json",
    ):
        with pytest.raises(urllib.error.HTTPError) as refused:  # with the stack's token: still only the store
            urllib.request.urlopen(urllib.request.Request(url + path, headers={"Authorization": f"Bearer {TOKEN}"}))
        refused.value.close()
        assert refused.value.code in (400, 404)
    for method in ("PUT", "DELETE", "POST"):
        request = urllib.request.Request(url + "/toy/versions/x.json", data=b"{}", method=method)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        refused.value.close()
        assert refused.value.code == 501


def test_an_interrupted_sync_resumes_and_never_uses_a_partial_file(served, store, tmp_path):
    url, seen = served
    root = tmp_path / "data"
    argv = [sys.executable, "-m", "toolkit.data.fetch", "--store", url, "--root", str(root), "--threads", "2", "toy"]
    killed = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    version_dirs: list[Path] = []
    while time.monotonic() < deadline:
        version_dirs = [p for p in (root / "toy").glob("*") if p.is_dir()]
        if version_dirs and sum(1 for p in version_dirs[0].rglob("*") if p.is_file()) >= 10:
            break
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    manifest = store.manifest("toy")
    placed = {p.relative_to(version_dirs[0]).as_posix() for p in version_dirs[0].rglob("*") if p.is_file()}
    assert 10 <= len(placed) < 42, "the sync was not interrupted half-way"
    entries = {e.path: e for e in manifest.files}
    for path in placed:  # what was put in place is complete and checked
        assert hashlib.sha256((version_dirs[0] / path).read_bytes()).hexdigest() == entries[path].sha256
    # a partial download left behind: half of one blob's bytes (finished from there), junk for another (redone)
    partial = root / ".lab" / "partial" / "toy"
    partial.mkdir(parents=True, exist_ok=True)
    todo = [e for e in manifest.files if e.path not in placed and not e.path.startswith("dup")]
    half, junk = todo[0], todo[1]
    blob = (store.root / "toy" / "blobs" / half.sha256).read_bytes()
    (partial / half.sha256).write_bytes(blob[: len(blob) // 2])
    (partial / junk.sha256).write_bytes(b"x" * (junk.size // 2))
    seen["ranges"] = 0
    [resumed] = fetch.sync(url, ["toy"], root)
    assert tree(resumed.path) == tree(tmp_path / "src")
    assert resumed.fetched_files == 42 - len(placed), "files verified before the interruption were fetched again"
    assert seen["ranges"] >= 2, "the partial files were not resumed with a Range request"
    assert not list(partial.iterdir())


def test_a_corrupted_file_is_fetched_again_and_only_it(store, tmp_path):
    root = tmp_path / "data"
    [synced] = fetch.sync(str(store.root), ["toy"], root)
    victim = synced.path / "class1" / "img005.bin"
    good = victim.read_bytes()
    victim.write_bytes(b"\0" * len(good))  # same size, other bytes
    (synced.path / "class2" / "img006.bin").unlink()
    [again] = fetch.sync(str(store.root), ["toy"], root)
    assert again.fetched_files == 2
    assert victim.read_bytes() == good
    assert tree(again.path) == tree(tmp_path / "src")


def test_a_dataset_or_version_not_in_the_store_is_one_line_naming_it(store, tmp_path):
    with pytest.raises(LabError, match=r"dataset cifar100 is not in the store") as missing:
        fetch.sync(str(store.root), ["toy", "cifar100"], tmp_path / "data")
    assert "\n" not in missing.value.one_line()
    assert not (tmp_path / "data" / "toy").exists(), "nothing is fetched when one of the datasets is missing"
    with pytest.raises(LabError, match=r"dataset toy@v9 is not in the store .* \(versions: "):
        fetch.check(str(store.root), ["toy@v9"])
    done = subprocess.run(
        [sys.executable, "-m", "toolkit.data.fetch", "--store", str(store.root), "--root", str(tmp_path), "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "dataset nope is not in the store" in done.stderr


def test_the_newest_version_is_taken_and_path_finds_the_one_named(store, tmp_path, monkeypatch):
    source = tmp_path / "src"
    first = store.manifest("toy").version
    time.sleep(1.1)  # pushed_at has seconds
    (source / "extra.txt").write_text("v2\n")
    push(store, source, "toy", "v2")
    root = tmp_path / "data"
    [synced] = fetch.sync(str(store.root), ["toy"], root)
    assert synced.version == "v2"
    fetch.sync(str(store.root), [f"toy@{first}"], root)
    monkeypatch.setenv("LAB_DATA", str(root))
    monkeypatch.delenv("LAB_DATA_VERSIONS", raising=False)
    assert data.path("toy") == root / "toy" / "v2"
    monkeypatch.setenv("LAB_DATA_VERSIONS", f"other=x,toy={first}")
    assert data.path("toy") == root / "toy" / first
    monkeypatch.setenv("LAB_DATA_VERSIONS", "toy=v7")
    with pytest.raises(FileNotFoundError, match="dataset toy@v7 is not in"):
        data.path("toy")
    with pytest.raises(data.DatasetMissing, match="dataset stl10 is not in"):
        data.path("stl10")


@pytest.mark.serial  # compares two timings: not beside another lane's burst
def test_an_unchanged_dataset_of_many_files_syncs_again_with_a_stat_per_file(tmp_path):
    """The second sync of 3,000 unchanged files hashes and fetches nothing: a small part of the first's time (an
    absolute figure on a machine shared by several test runs would be noise; benchmarks/data_sync.py measures it)."""
    source = tmp_path / "many"
    for i in range(3000):
        (source / f"d{i % 50}").mkdir(parents=True, exist_ok=True)
        (source / f"d{i % 50}" / f"{i}.bin").write_bytes(i.to_bytes(4, "big") * 8)
    store = FolderStore(tmp_path / "store")
    push(store, source, "many")
    root = tmp_path / "data"
    started = time.monotonic()
    fetch.sync(str(store.root), ["many"], root)
    first = time.monotonic() - started
    started = time.monotonic()
    [again] = fetch.sync(str(store.root), ["many"], root)
    took = time.monotonic() - started
    assert again.fetched_files == 0
    assert took < first / 4, f"the second sync took {took:.2f} s, the first {first:.2f} s"


def write_space(tmp_path: Path, data_line: str) -> Path:
    path = tmp_path / "space.yml"
    path.write_text(f"objective: {{metric: loss}}\nparams:\n  x: {{type: float, low: 0, high: 1}}\n{data_line}\n")
    return path


def test_the_space_files_data_key(tmp_path):
    assert space.load(write_space(tmp_path, "data: [cifar100, stl10@v2]")).data == ("cifar100", "stl10@v2")
    assert space.load(write_space(tmp_path, "")).data == ()
    with pytest.raises(LabError, match=r"data: 'CIFAR' is not NAME or NAME@VERSION.*data: a is listed more"):
        space.load(write_space(tmp_path, "data: [CIFAR, a, a@v1]"))
    with pytest.raises(LabError, match=r"data: must be a list"):
        space.load(write_space(tmp_path, "data: cifar100"))


def test_the_sweep_step_checks_before_any_trial_and_prepares_a_host(store, tmp_path):
    from toolkit.data import sweep

    here = space.load(write_space(tmp_path, "data: [toy]"))
    place = SweepPlace([], "http://x", tmp_path, data_store=str(store.root), data_root=tmp_path / "data")
    step = sweep.step(here, tmp_path, place)
    assert step is not None
    step.check()
    version = store.manifest("toy").version
    assert step.pinned == (f"toy@{version}",)
    prepared = step.on_host(prepare.LocalHost(python=sys.executable))
    assert prepared.env == {"LAB_DATA": str(tmp_path / "data"), "LAB_DATA_VERSIONS": f"toy={version}"}
    assert prepared.tags == {"lab.data": f"toy@{version}"}
    assert tree(tmp_path / "data" / "toy" / version) == tree(tmp_path / "src")
    missing = sweep.step(space.load(write_space(tmp_path, "data: [toy, cifar100@v2]")), tmp_path, place)
    with pytest.raises(LabError, match="dataset cifar100 is not in the store"):
        missing.check()
    assert sweep.step(space.load(write_space(tmp_path, "")), tmp_path, place) is None
    with pytest.raises(LabError, match="no dataset store"):
        sweep.step(here, tmp_path, SweepPlace([], "http://x", tmp_path))


def test_the_step_is_registered_with_the_sweeps_preparation():
    assert "toolkit.data.sweep:step" in prepare.STEP_FACTORIES


def test_a_host_that_lacks_the_dataset_fails_its_preparation_in_one_line(store, tmp_path):
    from toolkit.data import sweep

    step = sweep.DataStep(refs=("ghost",), store=str(store.root), store_here="", local_root=tmp_path / "d")
    step.check()  # the dispatcher cannot reach the store: the host checks it
    with pytest.raises(LabError, match=r"^datasets on local: dataset ghost is not in the store"):
        step.on_host(prepare.LocalHost(python=sys.executable))


def test_the_stacks_datasets_key():
    from toolkit.config import schema

    resolved = schema.resolve({"lab:datasets": ["cifar100", "stl10@v2"]}, stack="dev", target="local")
    assert resolved.settings is not None and resolved.settings.datasets == ("cifar100", "stl10@v2")
    assert schema.resolve({}, stack="dev", target="local").settings.datasets == ()
    bad = schema.resolve({"lab:datasets": ["CIFAR"]}, stack="dev", target="local")
    assert [p.key for p in bad.problems] == ["lab:datasets"]


def test_a_dataset_in_the_bucket_is_fetched_resumed_and_checked(emulator, tmp_path, monkeypatch):
    """The bucket's datasets/ through the real google-cloud-storage client against gcp-storage-emulator (it serves
    GCS's JSON API: objects listed by prefix, media downloads with Range, as GCS documents them)."""
    from google.cloud import storage

    from toolkit.data.bucket import BucketStore

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test-project")
    storage.Client().create_bucket("lab-data")
    source = make_dataset(tmp_path / "src")
    push(BucketStore("lab-data"), source, "toy")
    root = tmp_path / "data"
    manifest = BucketStore("lab-data").manifest("toy")
    partial = root / ".lab" / "partial" / "toy"
    partial.mkdir(parents=True)
    big = max(manifest.files, key=lambda e: e.size)
    (partial / big.sha256).write_bytes((source / big.path).read_bytes()[:1000])  # an interrupted download
    # The fetch as a worker does it: with the workers' conditioned grant (infra/identity.py), through GCS's IAM rules.
    from infra.identity import WORKER_BUCKET_ROLE, worker_read_condition
    from tests.gcp.gcs_iam import Binding, BucketPolicy, GcsIam
    from tests.gcp.iam_conditions import Condition

    worker = "serviceAccount:lab-dev-worker@test-project.iam.gserviceaccount.com"
    grant = Binding(WORKER_BUCKET_ROLE, (worker,), Condition.parse(worker_read_condition("lab-data")))
    iam = GcsIam(emulator, [BucketPolicy("lab-data", [grant])])
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", iam.url(worker))
    [synced] = fetch.sync("gs://lab-data/datasets", ["toy"], root)
    assert tree(synced.path) == tree(source)
    assert synced.fetched_bytes == manifest.bytes - len("same bytes\n") - 1000  # the partial was finished
    [again] = fetch.sync("gs://lab-data/datasets", ["toy"], root)
    assert again.fetched_files == 0
    with pytest.raises(LabError, match="dataset nope is not in the store gs://lab-data/datasets"):
        fetch.check("gs://lab-data/datasets", ["nope"])
    iam.close()
    assert not iam.unknown and [d for d in iam.denied if d[1] != "storage.buckets.get"] == []
