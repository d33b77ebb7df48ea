"""The daily loop up -> down -> up on gcp keeps the bucket and has it again the next morning, under pulumi-gcp 8, 9
and 10; a stranger's bucket is refused.

What runs for real: lab's provision/teardown flows, the state reader, `toolkit.gcp.artifact_bucket`, the Pulumi
programs themselves (infra/ and infra/persistent/, under Pulumi's mocks), and the real google-cloud-storage client
against gcp-storage-emulator (buckets, labels, objects). The engine is `StrictPulumi` (tests/gcp/pulumi_fakes.py):
Pulumi's steps as pkg/resource/deploy/step.go takes them, a program's `import` refused exactly as the engine refuses
one whose inputs differ from what pulumi-gcp reads ("inputs to import do not match the existing resource"), and
pulumi-gcp's labels per major version (its attribution label since 8, what an import reads in 8 and in 9+), each rule
cited there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gcp.gcs_refusals import NOT_YOURS_403
from tests.gcp.pulumi_fakes import (
    ATTRIBUTION_LABEL,
    GCP_STACK,
    IMPORT_MISMATCH,
    GcpLabels,
    StrictPulumi,
    gcp_settings,
    write_meta,
)
from tests.gcp.pulumi_fakes import (
    BUCKET as BUCKET_TYPE,
)
from tests.infra.program import Registered
from toolkit.errors import LabError
from toolkit.gcp import artifact_bucket as lab_bucket
from toolkit.gcp import pulumi_engine
from toolkit.labs import gcp as gcp_lab

storage = pytest.importorskip("google.cloud.storage")

PROJECT = "my-gcp-project"
BUCKET = "my-gcp-project-lab-dev"  # the derived lab:bucketName of stack dev
OURS = {"lab": "dev", "managed-by": "lab"}
PROVIDERS = [GcpLabels(8), GcpLabels(9), GcpLabels(10)]


@pytest.fixture
def gcs(emulator: str, monkeypatch: pytest.MonkeyPatch) -> storage.Client:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/credentials.json")  # leftovers: not asked
    client = storage.Client(project=PROJECT)
    for bucket in client.list_buckets():  # the emulator lives for the module: each test starts without buckets
        for blob in client.list_blobs(bucket.name):
            blob.delete()
        bucket.delete()
    return client


@pytest.fixture
def backend(isolated: Path) -> Path:
    return isolated / ".lab" / "pulumi"


@pytest.fixture
def config(tmp_path: Path) -> dict:
    key = tmp_path / "id_ed25519.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGxhYnRlc3RrZXlsYWJ0ZXN0a2V5bGFidGVzdGtleQ lab@test\n")
    return {**GCP_STACK, "lab:sshPublicKeyPath": str(key)}


def make_bucket(client: storage.Client, name: str, labels: dict[str, str]) -> None:
    """A bucket with labels (the emulator keeps labels only from an update, not from the create)."""
    bucket = client.create_bucket(name)
    bucket.labels = labels
    bucket.patch()


def up(engine: StrictPulumi, settings=None) -> gcp_lab.Provisioned:
    done = gcp_lab.provision(
        settings or gcp_settings(),
        engine,
        confirm=gcp_lab.confirm_with(True),
        say=lambda line: None,
        show=lambda plan, lines, total: None,
    )
    assert done is not None
    return done


def down(engine: StrictPulumi, **options) -> gcp_lab.TornDown | None:
    return gcp_lab.teardown(gcp_settings(), lambda: engine, backup=lambda outputs: None, say=lambda m: None, **options)


# -- the rule the stand-in enforces --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "differing"),
    [
        (GcpLabels(8), "[pulumiLabels]"),  # pulumi/pulumi-gcp#3044's own words
        (GcpLabels(9), "[labels pulumiLabels]"),
        (GcpLabels(10), "[labels pulumiLabels]"),
        (GcpLabels(8, attribution=False), None),  # gcp:addPulumiAttributionLabel: false, and 8.x's bucket import
    ],
    ids=["8", "9", "10", "8-without-attribution"],
)
def test_a_bucket_pulumi_made_and_dropped_cannot_be_imported_back(gcs, backend, config, labels, differing):
    """Retain-then-import, the design this replaces: the same inputs that created the bucket, imported back. The
    provider added its attribution label at creation; an import plans none, and from 9 reads no `labels` at all."""
    engine = StrictPulumi(backend, gcs, config, labels=labels)
    inputs = {"name": BUCKET, "location": "US-CENTRAL1", "labels": {**OURS, "role": "artifacts"}}
    engine._bucket_step(Registered(BUCKET_TYPE, "artifacts", inputs, {"import_id": None}), None)  # created
    made = dict(gcs.lookup_bucket(BUCKET).labels)
    assert (made.get(ATTRIBUTION_LABEL[0]) == ATTRIBUTION_LABEL[1]) == labels.attribution
    again = Registered(BUCKET_TYPE, "artifacts", inputs, {"import_id": BUCKET})  # dropped, then imported
    if differing is None:
        engine._bucket_step(again, None)
        return
    with pytest.raises(pulumi_engine.EngineFailed) as caught:
        engine._bucket_step(again, None)
    assert pulumi_engine.engine_reason(caught.value.text) == f"artifacts: {IMPORT_MISMATCH}: {differing}"


# -- the design: the bucket in the persistent stack ------------------------------------------------------------


@pytest.mark.parametrize("labels", PROVIDERS, ids=["pulumi-gcp-8", "pulumi-gcp-9", "pulumi-gcp-10"])
def test_the_next_up_after_a_down_has_the_bucket_back_without_an_import(gcs, backend, config, labels):
    """Red before the persistent stack: the second `up` imported the retained bucket and the engine refused it."""
    engine = StrictPulumi(backend, gcs, config, labels=labels)
    up(engine)
    assert gcs.lookup_bucket(BUCKET) is not None, "the first up creates the bucket"
    gcs.bucket(BUCKET).blob("backups/dev/20261201T080000Z/manifest.json").upload_from_string("{}")
    down(engine)
    assert gcs.lookup_bucket(BUCKET) is not None, "down keeps the bucket"
    assert "lab-persistent: destroy" not in engine.calls, "down never destroys the persistent stack"
    up(engine)  # the next morning
    assert [b.name for b in gcs.list_blobs(BUCKET)] == ["backups/dev/20261201T080000Z/manifest.json"]
    assert not [call for call in engine.calls if call.endswith("import")], "nothing was imported"
    assert lab_bucket.in_state(lab_bucket.persistent_state(gcp_settings()), BUCKET)


def test_destroy_data_destroys_the_persistent_stack_and_deletes_the_bucket(gcs, backend, config):
    engine = StrictPulumi(backend, gcs, config)
    up(engine)
    gcs.bucket(BUCKET).blob("mlflow-artifacts/dev/1/model.pkl").upload_from_string(b"weights")
    done = down(engine, destroy_data=True)
    assert done is not None and done.bucket_deleted == BUCKET
    assert engine.calls[-2:] == ["lab: destroy", "lab-persistent: destroy"]
    assert gcs.lookup_bucket(BUCKET) is None
    assert lab_bucket.persistent_state(gcp_settings()).cloud_resources == ()


def test_destroy_data_after_a_down_still_deletes_the_kept_bucket_only_when_it_is_this_labs(gcs, backend, config):
    engine = StrictPulumi(backend, gcs, config)
    up(engine)
    down(engine)
    assert down(engine) is None, "a lab that is down has nothing to destroy"
    done = down(engine, destroy_data=True)
    assert done is not None and done.bucket_deleted == BUCKET and done.destroyed == 0
    assert engine.calls[-1] == "lab-persistent: destroy" and gcs.lookup_bucket(BUCKET) is None
    make_bucket(gcs, BUCKET, {"team": "vision"})
    with pytest.raises(LabError, match="is not this lab's bucket"):
        down(engine, destroy_data=True)
    assert gcs.lookup_bucket(BUCKET) is not None


@pytest.mark.parametrize("labels", PROVIDERS, ids=["pulumi-gcp-8", "pulumi-gcp-9", "pulumi-gcp-10"])
def test_a_bucket_an_older_lab_kept_outside_any_state_is_taken_in_without_a_mismatch(gcs, backend, config, labels):
    """The retain-then-import design left the bucket in GCS and in no state. It goes into the persistent stack by
    `pulumi import --file`, which compares nothing, and the `up` after it converges its labels by an update."""
    make_bucket(gcs, BUCKET, {**OURS, "role": "artifacts", ATTRIBUTION_LABEL[0]: ATTRIBUTION_LABEL[1]})
    gcs.bucket(BUCKET).blob("datasets/cifar10/v1/manifest.json").upload_from_string("{}")
    engine = StrictPulumi(backend, gcs, config, labels=labels)
    up(engine)
    assert engine.calls[:3] == ["lab: preview", "lab-persistent: import", "lab-persistent: up"]
    assert [b.name for b in gcs.list_blobs(BUCKET)] == ["datasets/cifar10/v1/manifest.json"]
    up(engine)
    assert engine.calls.count("lab-persistent: import") == 1, "once in the persistent stack, never imported again"


def test_a_lab_stack_that_still_holds_the_bucket_with_destroy_data_is_refused(gcs, backend, config, isolated):
    """Before the persistent stack, the lab's stack held the bucket; with lab:destroyData it was not retain-on-delete,
    so the `up` that moves it would delete it."""
    from tests.gcp.pulumi_fakes import write_checkpoint

    write_checkpoint(backend, "dev", {}, [("gcp:storage/bucket:Bucket", BUCKET)])
    engine = StrictPulumi(backend, gcs, config)
    with pytest.raises(LabError, match="set lab:destroyData to false for this one `lab up`"):
        up(engine, gcp_settings(**{"lab:destroyData": True}))
    assert engine.calls == ["lab: preview"], "nothing changed"


def test_a_legacy_state_backend_is_refused_naming_the_upgrade(gcs, backend, config):
    write_meta(backend, version=0)
    with pytest.raises(LabError, match="pulumi state upgrade"):
        up(StrictPulumi(backend, gcs, config))


def test_a_same_named_bucket_of_someone_else_is_refused_naming_it(gcs, backend, config):
    make_bucket(gcs, BUCKET, {"team": "vision"})
    engine = StrictPulumi(backend, gcs, config)
    with pytest.raises(LabError) as caught:
        up(engine)
    assert caught.value.one_line() == (
        f"the bucket gs://{BUCKET} already exists and is not this lab's (its labels: team=vision); bucket names "
        "are global across GCS: set lab:bucketName to a name of your own in the stack file"
    )
    assert engine.calls == ["lab: preview"], "nothing changed"


def test_another_stacks_bucket_is_not_taken(gcs, backend, config):
    make_bucket(gcs, BUCKET, {"lab": "prod", "managed-by": "lab", "role": "artifacts"})
    with pytest.raises(LabError, match="is not this lab's"):
        up(StrictPulumi(backend, gcs, config))


def test_a_bucket_these_credentials_may_not_read_is_someone_elses(gcs_says, monkeypatch, backend, config):
    answers, env = gcs_says
    answers["GET"] = (403, NOT_YOURS_403)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", env["STORAGE_EMULATOR_HOST"])
    with pytest.raises(LabError) as caught:
        lab_bucket.keep(gcp_settings(), StrictPulumi(backend, None, config), lambda line: None)
    assert caught.value.one_line().startswith(f"the bucket gs://{BUCKET} exists and these credentials may not read it")
    assert "set lab:bucketName to another name" in caught.value.one_line()


def test_the_import_file_is_one_pulumi_import_accepts():
    """The component placeholder has no id and the bucket names it as its parent (import.go parseImportFile); the
    stand-in refuses a file Pulumi refuses, so the adoption above proves the file too."""
    from tests.gcp.pulumi_fakes import import_file_problems

    specs = lab_bucket.import_file(BUCKET)
    assert import_file_problems(specs) == []
    with_id = [{**spec, "id": BUCKET} for spec in specs]
    assert import_file_problems(with_id) == [
        "resource 'component' of type 'lab:infra:ArtifactBucket' has an ID, but is marked as a component"
    ]
    orphan = [spec for spec in specs if not spec.get("component")]
    assert import_file_problems(orphan) == [
        "the parent 'component' for resource 'bucket' of type 'gcp:storage/bucket:Bucket' has no entry in 'nameTable'"
    ]
