"""The daily loop up -> down -> up on gcp keeps the bucket and takes it back; a stranger's bucket is refused.

What runs for real: lab's provision/teardown flows, the state reader, `toolkit.gcp.artifact_bucket` with the real
google-cloud-storage client against gcp-storage-emulator (bucket existence and labels), and GCS's 403 body
where the emulator has none. The engine is a stand-in for Pulumi + GCP, built from their documented behaviour:
- a destroy leaves a `retainOnDelete` resource in the provider and drops it from the state
  (https://www.pulumi.com/docs/iac/concepts/options/retainondelete/);
- creating a bucket whose name exists fails with GCS's 409, and the update fails
  (https://cloud.google.com/storage/docs/json_api/v1/status-codes#409_Conflict);
- `import` takes an existing resource into the state and fails when it does not exist
  (https://www.pulumi.com/docs/iac/concepts/options/import/).
The program's side (LAB_ADOPT_BUCKET -> the bucket's import option) runs under mocks in
tests/infra/test_run_choices.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gcp.gcs_refusals import NOT_YOURS_403
from tests.gcp.pulumi_fakes import gcp_settings, write_checkpoint
from toolkit.errors import LabError
from toolkit.gcp import artifact_bucket as lab_bucket
from toolkit.gcp import pulumi_engine, pulumi_state
from toolkit.labs import gcp as gcp_lab

storage = pytest.importorskip("google.cloud.storage")

PROJECT = "my-gcp-project"
BUCKET = "my-gcp-project-lab-dev"  # the derived lab:bucketName of stack dev
CONFLICT_409 = (
    "error: 1 error occurred:\n\t* googleapi: Error 409: Your previous request to create the named bucket "
    "succeeded and you already own it., conflict\n"
)


@pytest.fixture
def gcs(emulator: str, monkeypatch: pytest.MonkeyPatch) -> storage.Client:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    client = storage.Client(project=PROJECT)
    for bucket in client.list_buckets():  # the emulator lives for the module: each test starts without buckets
        for blob in client.list_blobs(bucket.name):
            blob.delete()
        bucket.delete()
    return client


@pytest.fixture
def backend(isolated: Path) -> Path:
    return isolated / ".lab" / "pulumi"


def make_bucket(client: storage.Client, name: str, labels: dict[str, str]) -> None:
    """A bucket with labels (the emulator keeps labels only from an update, not from the create)."""
    bucket = client.create_bucket(name)
    bucket.labels = labels
    bucket.patch()


class PulumiAndGcp:
    """`up` and `destroy` of the lab's program as the engine and GCP answer them (see the module docstring)."""

    def __init__(self, client: storage.Client, backend: Path) -> None:
        self.client, self.backend = client, backend
        self.ups: list[pulumi_engine.RunChoices] = []

    def preview(self, choices, say):
        return pulumi_engine.Plan(counts={"create": 2}, steps=[("create", "gcp:storage/bucket:Bucket", "artifacts")])

    def up(self, choices, say):
        self.ups.append(choices)
        state = pulumi_state.read(f"file://{self.backend}", "dev")
        managed = lab_bucket.in_state(state, BUCKET)
        exists = self.client.lookup_bucket(BUCKET) is not None
        if not managed and choices.adopt_bucket == BUCKET:
            if not exists:
                raise pulumi_engine.EngineFailed("Pulumi failed", f"error: resource '{BUCKET}' does not exist")
        elif not managed:
            if exists:
                raise pulumi_engine.EngineFailed("Pulumi failed", CONFLICT_409)
            make_bucket(self.client, BUCKET, {"lab": "dev", "managed-by": "lab", "role": "artifacts"})
        outputs = {"tracker_external_ip": "198.51.100.10", "bucket_name": BUCKET, "worker_zone": choices.worker_zone}
        write_checkpoint(
            self.backend,
            "dev",
            outputs,
            [("gcp:storage/bucket:Bucket", BUCKET), ("gcp:compute/instance:Instance", "lab-dev-tracker")],
        )
        return outputs

    def destroy(self, say):
        write_checkpoint(self.backend, "dev", {}, [])  # the bucket is retained: gone from the state, kept in GCS


def up(engine: PulumiAndGcp) -> gcp_lab.Provisioned:
    done = gcp_lab.provision(
        gcp_settings(),
        engine,
        confirm=gcp_lab.confirm_with(True),
        say=lambda line: None,
        show=lambda plan, lines, total: None,
    )
    assert done is not None
    return done


def down(engine: PulumiAndGcp, **options) -> gcp_lab.TornDown | None:
    return gcp_lab.teardown(gcp_settings(), lambda: engine, backup=lambda outputs: None, say=lambda m: None, **options)


def test_up_down_up_takes_the_kept_bucket_back_with_what_it_holds(gcs, backend):
    engine = PulumiAndGcp(gcs, backend)
    up(engine)
    assert engine.ups[-1].adopt_bucket is None, "the first up creates the bucket"
    gcs.bucket(BUCKET).blob("backups/dev/20261201T080000Z/manifest.json").upload_from_string("{}")
    down(engine)
    assert gcs.lookup_bucket(BUCKET) is not None, "down keeps the bucket"
    up(engine)  # without adoption, GCS answers 409 here and the daily loop breaks
    assert engine.ups[-1].adopt_bucket == BUCKET
    assert [b.name for b in gcs.list_blobs(BUCKET)] == ["backups/dev/20261201T080000Z/manifest.json"]
    up(engine)
    assert engine.ups[-1].adopt_bucket is None, "once in the state again, the bucket is not imported twice"


def test_a_same_named_bucket_of_someone_else_is_refused_naming_it(gcs, backend):
    make_bucket(gcs, BUCKET, {"team": "vision"})
    engine = PulumiAndGcp(gcs, backend)
    with pytest.raises(LabError) as caught:
        up(engine)
    assert caught.value.one_line() == (
        f"the bucket gs://{BUCKET} already exists and is not this lab's (its labels: team=vision); bucket names "
        "are global across GCS: set lab:bucketName to a name of your own in the stack file"
    )
    assert engine.ups == [], "nothing ran"


def test_another_stacks_bucket_is_not_taken(gcs, backend):
    make_bucket(gcs, BUCKET, {"lab": "prod", "managed-by": "lab", "role": "artifacts"})
    with pytest.raises(LabError, match="is not this lab's"):
        up(PulumiAndGcp(gcs, backend))


def test_a_bucket_these_credentials_may_not_read_is_someone_elses(gcs_says, monkeypatch):
    answers, env = gcs_says
    answers["GET"] = (403, NOT_YOURS_403)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", env["STORAGE_EMULATOR_HOST"])
    with pytest.raises(LabError) as caught:
        lab_bucket.adoption(gcp_settings(), None)
    assert caught.value.one_line().startswith(f"the bucket gs://{BUCKET} exists and these credentials may not read it")
    assert "set lab:bucketName to another name" in caught.value.one_line()


def test_destroy_data_after_down_deletes_the_kept_bucket_only_when_it_is_this_labs(gcs, backend):
    engine = PulumiAndGcp(gcs, backend)
    up(engine)
    gcs.bucket(BUCKET).blob("mlflow-artifacts/dev/1/model.pkl").upload_from_string(b"weights")
    down(engine)
    assert down(engine) is None, "a lab that is down has nothing to destroy"
    done = down(engine, destroy_data=True)
    assert done is not None and done.bucket_deleted == BUCKET and done.destroyed == 0
    assert gcs.lookup_bucket(BUCKET) is None
    make_bucket(gcs, BUCKET, {"team": "vision"})
    with pytest.raises(LabError, match="is not this lab's bucket"):
        down(engine, destroy_data=True)
    assert gcs.lookup_bucket(BUCKET) is not None


def test_the_adoption_is_asked_again_for_each_zone_tried(gcs, backend):
    """A run that failed in one zone may already have imported the bucket; the next zone's run must not
    import it again."""
    make_bucket(gcs, BUCKET, {"lab": "dev", "managed-by": "lab", "role": "artifacts"})
    settings = gcp_settings(**{"lab:zones": ["us-central1-a", "us-central1-b"]})
    stockout = (
        "error: 1 error occurred:\n\t* Error creating instance: googleapi: Error 503: The zone "
        "'projects/my-gcp-project/zones/us-central1-a' does not have enough resources available to fulfill the "
        "request.  Try a different zone, or try again later., resourceExhausted\n"
    )

    class ImportsThenRunsOut(PulumiAndGcp):
        def up(self, choices, say):
            if choices.worker_zone == "us-central1-a":
                self.ups.append(choices)
                write_checkpoint(self.backend, "dev", {}, [("gcp:storage/bucket:Bucket", BUCKET)])
                raise pulumi_engine.EngineFailed("Pulumi failed", stockout)
            return super().up(choices, say)

    engine = ImportsThenRunsOut(gcs, backend)
    gcp_lab.provision(settings, engine, confirm=gcp_lab.confirm_with(True), say=lambda line: None, show=lambda *a: None)
    assert [(c.worker_zone, c.adopt_bucket) for c in engine.ups] == [
        ("us-central1-a", BUCKET),
        ("us-central1-b", None),
    ]
