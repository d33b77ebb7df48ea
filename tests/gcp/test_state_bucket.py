"""The gs:// state bucket: made and checked with the real google-cloud-storage client.

Against gcp-storage-emulator: creation, the settings read back (versioning, public access prevention,
uniform bucket-level access, labels), drift put right, someone else's bucket reported and left alone,
and `lab init --state-backend gs://...` end to end. The emulator ignores the settings sent with a
create (it stores them only on a later update) and enforces none of them; it has no IAM and no other
projects, so GCS's 403 and 409 answers come from a small local server that replies with GCS's own
error bodies, through the same client.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import LAB, ROOT, Ran
from tests.gcp.gcs_refusals import CREATE_403, NOT_YOURS_403, TAKEN_409
from toolkit.errors import LabError
from toolkit.gcp.state_bucket import ensure_state_bucket, shortfalls

storage = pytest.importorskip("google.cloud.storage")

PROJECT = "my-lab-project"
GCP_FLAGS = ("--project", PROJECT, "--zone", "us-central1-a", "--ssh-cidr", "203.0.113.7/32")


@pytest.fixture
def gcs(emulator: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This test's storage environment: the emulator, for this process and every `lab` it runs."""
    env = {"STORAGE_EMULATOR_HOST": emulator}
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    return env


@pytest.fixture
def bucket_name(request: pytest.FixtureRequest) -> str:
    """A name of its own for each test (the emulator lives for the module)."""
    return "state-" + request.node.name.replace("_", "-")[:40].strip("-")


def client():
    return storage.Client(project=PROJECT)


def metadata(name: str) -> dict:
    found = client().get_bucket(name)
    return {
        "versioning": found.versioning_enabled,
        "public access prevention": found.iam_configuration.public_access_prevention,
        "uniform bucket-level access": found.iam_configuration.uniform_bucket_level_access_enabled,
        "labels": found.labels,
    }


SAFE = {
    "versioning": True,
    "public access prevention": "enforced",
    "uniform bucket-level access": True,
    "labels": {"managed-by": "lab"},
}


def test_a_missing_bucket_is_created_with_safe_settings(gcs, bucket_name):
    assert ensure_state_bucket(bucket_name, PROJECT, "US-CENTRAL1") is True
    assert metadata(bucket_name) == SAFE
    assert ensure_state_bucket(bucket_name, PROJECT, "US-CENTRAL1") is False  # a second run finds it
    assert metadata(bucket_name) == SAFE


def test_a_lab_bucket_that_drifted_is_put_right(gcs, bucket_name):
    ensure_state_bucket(bucket_name, PROJECT, "US-CENTRAL1")
    drifted = client().get_bucket(bucket_name)
    drifted.versioning_enabled = False
    drifted.iam_configuration.public_access_prevention = "inherited"
    drifted.labels = {"managed-by": "lab", "owner": "me"}
    drifted.patch()
    assert {str(s) for s in shortfalls(client().get_bucket(bucket_name))} == {
        "versioning is off",
        "public access prevention is inherited, not enforced",
    }
    assert ensure_state_bucket(bucket_name, PROJECT, "US-CENTRAL1") is False
    assert metadata(bucket_name) == {**SAFE, "labels": {"managed-by": "lab", "owner": "me"}}


def test_someone_elses_unsafe_bucket_is_reported_and_left_alone(gcs, bucket_name):
    client().create_bucket(bucket_name)
    before = metadata(bucket_name)
    with pytest.raises(LabError) as raised:
        ensure_state_bucket(bucket_name, PROJECT, "US-CENTRAL1")
    assert raised.value.one_line() == (
        f"gs://{bucket_name} is not fit to hold Pulumi state: versioning is off, public access prevention is "
        "inherited, not enforced, uniform bucket-level access is off; lab changes only buckets it made; fix it "
        f"with `gcloud storage buckets update gs://{bucket_name} --versioning --public-access-prevention "
        "--uniform-bucket-level-access`, or pick another bucket"
    )
    assert metadata(bucket_name) == before


def test_someone_elses_safe_bucket_is_used_as_it_is(gcs, bucket_name):
    theirs = client().create_bucket(bucket_name)
    theirs.versioning_enabled = True
    theirs.iam_configuration.public_access_prevention = "enforced"
    theirs.iam_configuration.uniform_bucket_level_access_enabled = True
    theirs.labels = {"team": "research"}
    theirs.patch()
    assert ensure_state_bucket(bucket_name, PROJECT, "US-CENTRAL1") is False
    assert metadata(bucket_name)["labels"] == {"team": "research"}  # not relabelled


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(ROOT / "Pulumi.yaml", folder / "Pulumi.yaml")
    return folder


@pytest.fixture
def lab_init(project_dir: Path):
    def run(*args: str, env: dict[str, str]) -> Ran:
        merged = {**os.environ, "COLUMNS": "200", "LAB_PROJECT_DIR": str(project_dir), **env}
        done = subprocess.run(
            [str(LAB), *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, env=merged, timeout=120
        )
        return Ran(done.returncode, done.stdout, done.stderr)

    return run


def test_init_with_a_gs_backend_makes_the_bucket_first(gcs, bucket_name, lab_init, project_dir):
    ran = lab_init("init", *GCP_FLAGS, "--state-backend", f"gs://{bucket_name}", env=gcs)
    assert ran.code == 0, ran.err
    assert f"created the state bucket gs://{bucket_name}" in ran.err
    assert metadata(bucket_name) == SAFE
    stack_file = project_dir / "Pulumi.dev.yaml"
    assert yaml.safe_load(stack_file.read_text())["config"]["lab:stateBackend"] == f"gs://{bucket_name}"
    assert lab_init("config", "validate", env=gcs).code == 0
    again = lab_init("init", "-s", "second", *GCP_FLAGS, "--state-backend", f"gs://{bucket_name}/second", env=gcs)
    assert again.code == 0, again.err
    assert f"checked the state bucket gs://{bucket_name}" in again.err


def test_init_refuses_an_unsafe_bucket_and_writes_nothing(gcs, bucket_name, lab_init, project_dir):
    client().create_bucket(bucket_name)
    ran = lab_init("init", *GCP_FLAGS, "--state-backend", f"gs://{bucket_name}", env=gcs)
    assert ran.code == 1
    assert ran.err.strip().startswith(f"error: gs://{bucket_name} is not fit to hold Pulumi state: versioning is off")
    assert len(ran.err.strip().splitlines()) == 1
    assert not (project_dir / "Pulumi.dev.yaml").exists()


def test_a_name_someone_else_holds(gcs_says, lab_init, project_dir):
    answers, env = gcs_says
    answers["GET"] = (403, NOT_YOURS_403)
    ran = lab_init("init", *GCP_FLAGS, "--state-backend", "gs://taken-state", env=env)
    assert ran.code == 1
    assert ran.err.strip() == (
        f"error: gs://taken-state exists but these credentials may not read it (403: {NOT_YOURS_403}); the name "
        "belongs to another project or you lack storage.buckets.get on it; pick another name with "
        "--state-backend gs://NAME, or get roles/storage.admin on that bucket"
    )
    assert not (project_dir / "Pulumi.dev.yaml").exists()


def test_a_name_taken_when_creating(gcs_says, lab_init, project_dir):
    answers, env = gcs_says
    answers["POST"] = (409, TAKEN_409)
    ran = lab_init("init", *GCP_FLAGS, "--state-backend", "gs://popular-name", env=env)
    assert ran.code == 1
    assert ran.err.strip() == (
        f"error: the bucket name popular-name is taken (409: {TAKEN_409}); bucket names are global across all of "
        f"GCS; pick another with --state-backend gs://NAME, such as gs://{PROJECT}-lab-state"
    )
    assert not (project_dir / "Pulumi.dev.yaml").exists()


def test_no_permission_to_create(gcs_says, lab_init, project_dir):
    answers, env = gcs_says
    answers["POST"] = (403, CREATE_403)
    ran = lab_init("init", *GCP_FLAGS, "--state-backend", "gs://my-lab-state", env=env)
    assert ran.code == 1
    assert ran.err.strip() == (
        f"error: permission denied creating gs://my-lab-state in project {PROJECT} (403: {CREATE_403}); you need "
        f"storage.buckets.create there (roles/storage.admin on {PROJECT}), or create the bucket yourself and run "
        "lab init again"
    )
    assert not (project_dir / "Pulumi.dev.yaml").exists()


def test_no_credentials(lab_init, project_dir):
    # No emulator, no application-default credentials, and no metadata server to ask: nothing reaches GCS.
    env = {"STORAGE_EMULATOR_HOST": "", "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:9"}
    ran = lab_init("init", *GCP_FLAGS, "--state-backend", "gs://my-lab-state", env=env)
    assert ran.code == 1
    assert ran.err.strip() == (
        "error: no Google Cloud credentials to reach the state bucket; gcloud auth application-default login"
    )
    assert not (project_dir / "Pulumi.dev.yaml").exists()
