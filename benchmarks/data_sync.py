"""A CIFAR-100-sized dataset from the bucket (gcp-storage-emulator) onto a fresh VM-like worker: first and second sync.

Run as root: .venv/bin/python benchmarks/data_sync.py [--files 50000] [--mb 160] [--threads 16]. Two shapes of
CIFAR-100's ~160 MB: one archive (as cifar-100-python.tar.gz, random bytes: it does not compress), and small files
of CIFAR's size per image (~3.3 kB; 50,000 of them by default; fewer files make a proportionally smaller dataset).
Pushing 50,000 objects into gcp-storage-emulator (pure Python) takes it well over 20 minutes on a 2-core machine.
Each is pushed with `lab data push`'s code (toolkit.data.store.push into the
bucket's datasets/) to gcp-storage-emulator on this machine's bridge address, then fetched on a fresh VM-like host
with `python -m toolkit.data.fetch` (its own venv with google-cloud-storage, the toolkit copied over), twice: the
first sync (everything fetched and checked) and the second (nothing changed: a manifest read and a stat per file).
Prints seconds and MB/s for each. Uses the pool named by LAB_TEST_HOSTS_TOP/BRIDGE/NET (one host), torn down after.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port  # noqa: E402
from tests.hosts.vmhosts import HostPool, pool_from_env  # noqa: E402

BUCKET = "lab-bench-data"
VENV = "/opt/bench/venv"
LIB = "/opt/bench/lib"
ROOT_ON_HOST = "/var/cache/lab/datasets"


def make_archive(folder: Path, megabytes: int) -> Path:
    folder.mkdir(parents=True)
    path = folder / "cifar-100-python.tar.gz"
    with path.open("wb") as handle:
        for _ in range(megabytes):
            handle.write(os.urandom(1 << 20))
    return path


def make_files(folder: Path, count: int, megabytes: int) -> Path:
    size = megabytes * (1 << 20) // count
    for i in range(count):
        sub = folder / ("train" if i < count * 5 // 6 else "test") / f"{i % 100:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:05d}.png").write_bytes(os.urandom(size))
    return folder


def emulator(host: str, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("gcp-storage-emulator")),
            "start",
            "--host",
            host,
            "--port",
            str(port),
            "--in-memory",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tempfile.mkdtemp(prefix="bench-gcs-"),
    )
    time.sleep(3)
    return process


def push(source: Path, name: str) -> tuple[float, int]:
    from google.cloud import storage

    from toolkit.data.bucket import BucketStore
    from toolkit.data.store import push as push_to

    client = storage.Client(project="bench")
    if client.lookup_bucket(BUCKET) is None:
        client.create_bucket(BUCKET)
    started = time.monotonic()
    result = push_to(BucketStore(BUCKET), source, name)
    return time.monotonic() - started, result.manifest.bytes


def prepare_host(pool: HostPool, host: object) -> float:
    """A venv with google-cloud-storage (what the worker role installs) and the toolkit, on a fresh host."""
    started = time.monotonic()
    pool.ssh(host, f"python3 -m venv {VENV} && {VENV}/bin/pip install -q google-cloud-storage", timeout=600)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(ROOT / "toolkit", arcname="toolkit", filter=lambda t: None if "__pycache__" in t.name else t)
    target = host.ssh_command(f"mkdir -p {LIB} && tar -x -C {LIB}", user="root")  # type: ignore[attr-defined]
    subprocess.run(target, input=buffer.getvalue(), check=True, capture_output=True)
    return time.monotonic() - started


def fetch(pool: HostPool, host: object, emulator_url: str, name: str, threads: int) -> dict:
    command = (
        f"cd {LIB} && STORAGE_EMULATOR_HOST={emulator_url} {VENV}/bin/python -m toolkit.data.fetch"
        f" --store gs://{BUCKET}/datasets --root {ROOT_ON_HOST} --threads {threads} --json {name}"
    )
    started = time.monotonic()
    ran = pool.ssh(host, command, timeout=3600, check=False)
    seconds = time.monotonic() - started
    if ran.returncode != 0:
        raise SystemExit(f"fetch of {name} failed: {ran.stderr[-2000:]}")
    [synced] = json.loads(ran.stdout)
    return {**synced, "wall_s": seconds}


def line(label: str, synced: dict) -> str:
    mb = synced["bytes"] / 1e6
    rate = mb / synced["wall_s"] if synced["wall_s"] else 0.0
    fetched = synced["fetched_bytes"] / 1e6
    return (
        f"{label:<28} {synced['wall_s']:7.2f} s (in fetch {synced['seconds']:6.2f} s)  {rate:7.1f} MB/s of"
        f" {mb:6.1f} MB, {synced['files']:>6} files, fetched {synced['fetched_files']:>6} ({fetched:.1f} MB)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=50_000, help="small files (0: the archive only)")
    parser.add_argument("--mb", type=int, default=160)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    pool = pool_from_env()
    port = free_port()
    emulator_url = f"http://{pool.net}.1:{port}"
    os.environ["STORAGE_EMULATOR_HOST"] = emulator_url
    os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "bench")
    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    served = None
    try:
        pool.down()
        pool.build_base()
        [host] = pool.up(1)  # brings the bridge up: the emulator listens on its address
        served = emulator(f"{pool.net}.1", port)
        print(f"worker {host.ip} prepared in {prepare_host(pool, host):.1f} s (venv + google-cloud-storage + toolkit)")
        shapes = {"cifar-archive": lambda: make_archive(work / "archive", args.mb)}
        if args.files:
            files_mb = args.mb * args.files // 50_000  # CIFAR's size per file (~3.3 kB), however many files
            shapes["cifar-files"] = lambda: make_files(work / "files", args.files, files_mb)
        for name, make in shapes.items():  # each shape measured as soon as it is pushed
            seconds, size = push(make(), name)
            print(f"pushed {name}: {size / 1e6:.1f} MB in {seconds:.1f} s to the emulator", flush=True)
            print(line(f"{name}: first sync", fetch(pool, host, emulator_url, name, args.threads)), flush=True)
            print(line(f"{name}: second sync", fetch(pool, host, emulator_url, name, args.threads)), flush=True)
    finally:
        if served is not None:
            served.terminate()
            served.wait(10)
        pool.down()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
