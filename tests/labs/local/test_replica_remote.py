"""The continuous replica in object stores: gs:// (the default for a stack with a bucket) against
gcp-storage-emulator, and s3:// against moto's server (the test double for S3-compatible stores: MinIO, R2).
Real Litestream, real MLflow server, the real google-cloud-storage and boto3 clients reading what landed.

How Litestream (0.5.17) reaches these stores, from its source:
- gs: gs/replica_client.go creates its client with `storage.NewClient(ctx)` and no options. The Go client
  (googleapis/google-cloud-go storage/storage.go, NewClient) reads STORAGE_EMULATOR_HOST: when it is set, it
  talks to that host (`host:port`, or `http://host:port`: a value with "://" is parsed as a URL) and adds
  `option.WithoutAuthentication()`, so no credentials are needed or read; without it, Application Default
  Credentials. The bucket must exist (Litestream creates none).
- s3: s3/replica_client.go NewReplicaClientFromURL reads `endpoint`, `region`, `forcePathStyle` (and
  `skipVerify`, `signPayload`, `requireContentMD5`) from the URL's query string; an endpoint turns path-style
  URLs on; the keys come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (else LITESTREAM_ACCESS_KEY_ID /
  LITESTREAM_SECRET_ACCESS_KEY, else the AWS SDK's default chain).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, serving, wait_past
from tests.labs.local.crashes import (
    assert_confirmed_runs_survived,
    kill_everything,
    lose_the_db,
    run_names,
    write_until_killed,
)
from tests.labs.local.test_replica import wait_for_runs
from toolkit.errors import LabError
from toolkit.tracker import replica

mlflow = pytest.importorskip("mlflow")
storage = pytest.importorskip("google.cloud.storage")
boto3 = pytest.importorskip("boto3")

GS_BUCKET = "lab-replica-gs"
S3_BUCKET = "lab-replica-s3"
# moto accepts any key pair; Litestream must still be handed one (it reads no ~/.aws here).
S3_KEYS = {"AWS_ACCESS_KEY_ID": "lab-test", "AWS_SECRET_ACCESS_KEY": "lab-test-secret"}


pytestmark = [pytest.mark.usefixtures("no_client_retries"), pytest.mark.slow]  # slow: starts labs


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto's server mode (`moto[server]`): an S3 endpoint on a free port, in memory."""
    port = free_port()
    argv = [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)]
    yield from serving(argv, port, "moto_server")


def s3_client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
    )


def stack_file(folder: Path, name: str, **keys: str) -> Path:
    path = folder / f"Pulumi.{name}.yaml"
    lines = ["config:", "  lab:target: local", *(f"  lab:{key}: {json.dumps(value)}" for key, value in keys.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def status(lab, stack: Path, env: dict[str, str]) -> dict:
    ran = lab("status", "--stack", str(stack), "--json", env=env)
    assert ran.code == 0, ran.err
    return json.loads(ran.out)


def wait_for_replica(lab, stack: Path, env: dict[str, str], txid_after: int = 0, timeout: float = 30) -> int:
    """`lab status --json` until the replica holds a transaction newer than `txid_after`; that transaction."""
    deadline = time.monotonic() + timeout
    while True:
        replica = status(lab, stack, env)["replica"]
        if replica["newest_txid"] is not None and replica["newest_txid"] > txid_after:
            return int(replica["newest_txid"])
        assert time.monotonic() < deadline, f"the replica did not catch up: {replica}"
        time.sleep(0.5)


def test_litestream_reads_an_s3_compatible_store_with_the_environment_the_lab_gives_it(moto_endpoint):
    """The real binary against moto: an empty replica reads as empty with the lab's environment, though the
    caller's has AWS_CA_BUNDLE; handed that variable, Litestream's S3 client cannot even start (the AWS SDK for Go
    refuses a custom CA with the plain HTTP client Litestream gives it), which is why the lab leaves it out."""
    s3_client(moto_endpoint).create_bucket(Bucket="lab-replica-empty")
    url = f"s3://lab-replica-empty/replica/dev?endpoint={moto_endpoint}&region=us-east-1"
    bundle = os.environ.get("AWS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    caller = {**os.environ, **S3_KEYS, "AWS_CA_BUNDLE": bundle}
    env = replica.environment(url, caller)
    assert replica.position(url, "mlflow.db", env) is None
    with pytest.raises(LabError, match="RootCAs"):
        replica.position(url, "mlflow.db", {**env, "AWS_CA_BUNDLE": bundle})


def test_a_replica_litestream_cannot_read_is_an_error_not_an_empty_replica(moto_endpoint, tmp_path):
    url = f"s3://lab-replica-empty/replica/dev?endpoint={moto_endpoint}&region=us-east-1"
    caller = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true"}
    """An empty replica is [] and exit 0 (test above); a store Litestream cannot read is an error, so `lab up`
    never takes "no credentials" or "no such bucket" for "nothing was replicated"."""
    with pytest.raises(LabError, match=r"cannot read the replica .*no EC2 IMDS role found"):
        replica.position(url, "mlflow.db", replica.environment(url, caller))  # no keys anywhere
    missing = f"s3://lab-replica-never-made/replica/dev?endpoint={moto_endpoint}&region=us-east-1"
    with pytest.raises(LabError, match=r"cannot read the replica .*NoSuchBucket"):
        replica.position(missing, "mlflow.db", replica.environment(missing, {**caller, **S3_KEYS}))


@pytest.mark.serial  # the 1 s durability promise (crashes.SURVIVES_AFTER_S), in the serial lane
def test_gs_replica_in_the_bucket_brings_back_a_killed_tracker_and_a_past_moment(
    lab, emulator, ports, isolated, monkeypatch
):
    """A stack with lab:bucketName replicates to gs://<bucket>/replica/<stack>/ without being told; after a
    crash that loses the DB, `lab up` restores from there, and `lab restore --at` reads it too."""
    env = {"STORAGE_EMULATOR_HOST": emulator, "GOOGLE_CLOUD_PROJECT": "test-project"}
    for name, value in env.items():  # this test's process too: the google-cloud-storage client below
        monkeypatch.setenv(name, value)
    gcs = storage.Client()
    if not gcs.bucket(GS_BUCKET).exists():
        gcs.create_bucket(GS_BUCKET)
    stack = stack_file(isolated, "rep", bucketName=GS_BUCKET)
    state = isolated / ".lab" / "stacks" / "rep"
    up = ("up", "--stack", str(stack), "--no-jupyter", "--port", ports["mlflow"])
    try:
        ran = lab(*up, env=env, timeout=180)
        assert ran.code == 0, ran.err
        assert f"replicating the tracker's DBs to gs://{GS_BUCKET}/replica/rep" in ran.err
        assert status(lab, stack, env)["replica"]["url"] == f"gs://{GS_BUCKET}/replica/rep"

        client = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{ports['mlflow']}")
        experiment = client.create_experiment("crash-gs")
        confirmed, killed_at = write_until_killed(client, experiment, 7, lambda: kill_everything(state))
        lose_the_db(state)
        # What survives is in the emulator's bucket, where Litestream put it: one folder per DB.
        names = [b.name for b in gcs.list_blobs(GS_BUCKET, prefix="replica/rep/mlflow.db/")]
        assert any(name.endswith(".ltx") for name in names), names

        ran = lab(*up, env=env, timeout=180)
        assert ran.code == 0, ran.err
        assert f"the replica gs://{GS_BUCKET}/replica/rep is the newest state" in ran.err
        db = state / "tracker" / "mlflow.db"
        assert_confirmed_runs_survived(db, confirmed, killed_at)
        survived = run_names(db)

        # Point in time, from the same gs replica: A is kept, B (written after the moment) is undone.
        url = f"gs://{GS_BUCKET}/replica/rep"
        client.create_run(experiment, run_name="A")
        a_dated = wait_for_runs(url, [*survived, "A"])
        # The first whole second after A's file: the earliest --at that keeps A (test_replica.test_restore_at_a_time)
        moment = a_dated.replace(microsecond=0) + dt.timedelta(seconds=1)
        wait_past(moment)
        client.create_run(experiment, run_name="B")
        wait_for_runs(url, [*survived, "A", "B"])
        ran = lab("restore", "--stack", str(stack), "--at", moment.isoformat(), "--stop", env=env, timeout=180)
        assert ran.code == 0, ran.err
        assert run_names(db) == [*survived, "A"]
    finally:
        lab("down", "--stack", str(stack), "--yes", env=env, timeout=180)


@pytest.mark.serial  # the 1 s durability promise (crashes.SURVIVES_AFTER_S), in the serial lane
def test_s3_replica_on_an_s3_compatible_store_brings_back_a_killed_tracker(lab, moto_endpoint, ports, isolated):
    """lab:replica names an S3-compatible store by its endpoint (as for MinIO or R2); the keys come from the
    environment. After a crash that loses the DB, `lab up` restores from it."""
    s3 = s3_client(moto_endpoint)
    s3.create_bucket(Bucket=S3_BUCKET)
    url = f"s3://{S3_BUCKET}/replica/s3rep?endpoint={moto_endpoint}&region=us-east-1"
    stack = stack_file(isolated, "s3rep", replica=url)
    state = isolated / ".lab" / "stacks" / "s3rep"
    # A CA bundle for the AWS SDKs is common where a proxy intercepts TLS (it is set on the machines this lab is
    # built on): Litestream's S3 client refuses to start with it, so the lab must not hand it over.
    env = {**S3_KEYS, "AWS_CA_BUNDLE": os.environ.get("AWS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")}
    up = ("up", "--stack", str(stack), "--no-jupyter", "--port", ports["mlflow"])
    try:
        ran = lab(*up, env=env, timeout=180)
        assert ran.code == 0, ran.err
        assert f"replicating the tracker's DBs to {url}" in ran.err
        wait_for_replica(lab, stack, env)

        client = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{ports['mlflow']}")
        experiment = client.create_experiment("crash-s3")
        confirmed, killed_at = write_until_killed(client, experiment, 6, lambda: kill_everything(state))
        lose_the_db(state)
        listed = s3.list_objects_v2(Bucket=S3_BUCKET, Prefix="replica/s3rep/mlflow.db/")
        assert any(o["Key"].endswith(".ltx") for o in listed.get("Contents", [])), listed

        ran = lab(*up, env=env, timeout=180)
        assert ran.code == 0, ran.err
        assert f"the replica {url} is the newest state" in ran.err
        assert_confirmed_runs_survived(state / "tracker" / "mlflow.db", confirmed, killed_at)
    finally:
        lab("down", "--stack", str(stack), "--yes", env=env, timeout=180)


def test_a_replica_moved_to_an_empty_store_starts_there_and_catches_up(lab, ports, isolated):
    """lab:replica changed (a new bucket, a wiped store): Litestream's local state (`.mlflow.db-litestream/`)
    is ahead of the new, empty replica and names LTX files its 5-minute L0 retention has removed by then
    (deleted here by hand, as that retention does). Kept, the new replica never catches up ("open ltx file
    .../ltx/0/0000000000000001-0000000000000001.ltx: no such file or directory", seen on a tracker host whose
    replica moved from file:// to gs://); the lab starts the new replica from a snapshot instead."""
    first, second = isolated / "replica-a", isolated / "replica-b"
    stack = stack_file(isolated, "moved", replica=f"file://{first}")
    state = isolated / ".lab" / "stacks" / "moved"
    up = ("up", "--stack", str(stack), "--no-jupyter", "--port", ports["mlflow"])
    client = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{ports['mlflow']}")
    try:
        assert lab(*up, timeout=180).code == 0
        snapshot = wait_for_replica(lab, stack, {})
        experiment = client.create_experiment("before-the-move")
        for n in range(3):
            client.create_run(experiment, run_name=f"before-{n}")
        wait_for_replica(lab, stack, {}, txid_after=snapshot)  # L0 files after the first snapshot
        assert lab("down", "--stack", str(stack), timeout=180).code == 0
        removed = list((state / "tracker" / ".mlflow.db-litestream").rglob("0000000000000001-0000000000000001.ltx"))
        assert removed, "Litestream's local state has no first L0 file to lose"
        for path in removed:
            path.unlink()

        stack_file(isolated, "moved", replica=f"file://{second}")
        ran = lab(*up, timeout=180)
        assert ran.code == 0, ran.err
        assert f"the replica moved to file://{second}" in ran.err
        experiment = client.create_experiment("after-the-move")
        for n in range(3):
            client.create_run(experiment, run_name=f"after-{n}")
        deadline = time.monotonic() + 30
        while (now := status(lab, stack, {})["replica"])["behind_txids"] != 0 or now["newest_txid"] is None:
            assert time.monotonic() < deadline, f"the moved replica did not catch up: {now}"
            time.sleep(0.5)
        assert now["last_error"] is None, now

        kill_everything(state)  # the new replica alone brings back everything, from before the move too
        lose_the_db(state)
        shutil.rmtree(state / "backups")
        ran = lab(*up, timeout=180)
        assert ran.code == 0 and "is the newest state" in ran.err, ran.err
        assert sorted(run_names(state / "tracker" / "mlflow.db")) == [
            *(f"after-{n}" for n in range(3)),
            *(f"before-{n}" for n in range(3)),
        ]
    finally:
        lab("down", "--stack", str(stack), "--force", timeout=180)
