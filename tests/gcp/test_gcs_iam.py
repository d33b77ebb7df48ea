"""GCS with IAM (tests/gcp/gcs_iam.py) and the lab's identities through it, each with its real bindings.

The workers' and the tracker's bindings are the BucketIAMMember resources the Pulumi program registers (run under
Pulumi's mocks, tests/infra/program.py); the CI runner's are toolkit.gcp.ci_identity's, which docs/gcp.md and
`lab schedule down --print` give. Each identity calls through the real code path (toolkit.data.fetch on a worker,
toolkit.tracker.gcs on the tracker and in a no-SSH `lab down`, toolkit.gcp.pulumi_state for the state) with the
real google-cloud-storage client, against gcp-storage-emulator behind the stand-in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.request import Request as HttpRequest
from urllib.request import urlopen

import pytest

from tests.gcp.gcs_iam import (
    Binding,
    BucketPolicy,
    Check,
    GcsIam,
    UnknownRole,
    checks_for,
    denied_message,
    member_with,
    policy_from_program,
)
from tests.gcp.iam_conditions import Condition, Request, UnsupportedCondition
from toolkit.gcp import ci_identity

storage = pytest.importorskip("google.cloud.storage")
exceptions = pytest.importorskip("google.api_core.exceptions")

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "my-gcp-project"
STACK = "dev"
OWNER = "user:researcher@example.com"  # the project's owner: storage.admin inherited from the project
CI = f"serviceAccount:lab-teardown@{PROJECT}.iam.gserviceaccount.com"
STATE_BUCKET = "my-gcp-project-lab-state"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGxhYnRlc3RrZXlsYWJ0ZXN0a2V5bGFidGVzdGtleQ lab@test\n"


@pytest.fixture(scope="module")
def program_policy(tmp_path_factory: pytest.TempPathFactory) -> BucketPolicy:
    """The artifact bucket's policy as the programs declare it for the shipped dev stack: the bucket is the
    persistent stack's (infra/persistent/), its bindings the lab stack's (infra/)."""
    from tests.infra.program import INFRA, ProgramRun, run_program
    from toolkit.config import stack

    key = tmp_path_factory.mktemp("key") / "id_ed25519.pub"
    key.write_text(KEY)
    raw = dict(stack.read(str(ROOT / "Pulumi.dev.yaml")).raw)
    raw["lab:sshPublicKeyPath"] = str(key)
    kept = run_program(raw, program=INFRA / "persistent", project="lab-persistent")
    lab = run_program(raw)
    return policy_from_program(ProgramRun(resources=kept.resources + lab.resources, outputs=lab.outputs))


def make_bucket(emulator: str, name: str) -> None:
    """A bucket made as its project's owner would (buckets.insert is a project permission): on the emulator itself,
    emptied when a test before left it."""
    body = json.dumps({"name": name}).encode()
    request = HttpRequest(f"{emulator}/storage/v1/b?project={PROJECT}", body, {"Content-Type": "application/json"})
    try:
        urlopen(request, timeout=10).close()
    except OSError:  # 409: it is there already
        with urlopen(f"{emulator}/storage/v1/b/{name}/o", timeout=10) as listing:
            names = [item["name"] for item in json.load(listing).get("items", [])]
        for object_name in names:
            quoted = object_name.replace("/", "%2F")
            urlopen(HttpRequest(f"{emulator}/storage/v1/b/{name}/o/{quoted}", method="DELETE"), timeout=10).close()


@pytest.fixture
def lab_gcs(
    emulator: str, program_policy: BucketPolicy, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[GcsIam, Callable[[str], storage.Client]]]:
    """The stand-in with the artifact bucket's policy from the program (plus the owner's inherited admin and the CI
    runner's grants) and the state bucket's; and `act_as(member)`, which makes this process that member."""
    bucket = program_policy.bucket
    ci_bindings = [to_binding(g) for g in ci_identity.grants(PROJECT, STATE_BUCKET, bucket, STACK)]
    custom = {
        f"projects/{PROJECT}/roles/{ci_identity.BUCKET_POLICY_ROLE_ID}": frozenset(
            ci_identity.BUCKET_POLICY_PERMISSIONS
        )
    }
    artifact = BucketPolicy(
        bucket,
        [
            *program_policy.bindings,
            Binding("roles/storage.admin", (OWNER,)),
            *[b for w, b in ci_bindings if w == bucket],
        ],
        custom_roles=custom,
        uniform_access=program_policy.uniform_access,
    )
    state = BucketPolicy(
        STATE_BUCKET, [Binding("roles/storage.admin", (OWNER,)), *[b for w, b in ci_bindings if w == STATE_BUCKET]]
    )
    for name in (bucket, STATE_BUCKET):
        make_bucket(emulator, name)
    iam = GcsIam(emulator, [artifact, state])
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)

    def act_as(member: str) -> storage.Client:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", iam.url(member))
        return storage.Client(project=PROJECT)

    yield iam, act_as
    iam.close()
    assert not iam.unknown, f"requests the stand-in could not judge: {iam.unknown}"


def to_binding(grant: ci_identity.Grant) -> tuple[str, Binding]:
    condition = Condition.parse(grant.condition) if grant.condition else None
    return grant.where.removeprefix("gs://"), Binding(grant.role, (CI,), condition)


def refusals(iam: GcsIam) -> list[tuple[str, str, str]]:
    """What was refused, but the bucket lookups google-cloud-storage (3.17) makes in the background for its
    telemetry: it takes a 403 there as an answer (google/cloud/storage/_bucket_metadata_cache.py,
    `_fetch_background`), and none of the identities holds storage.buckets.get."""
    return [d for d in iam.denied if d[1] != "storage.buckets.get"]


def put(client: storage.Client, bucket: str, name: str, data: bytes = b"x") -> None:
    client.bucket(bucket).blob(name).upload_from_string(data)


def refused(call: Callable[[], object], permission: str) -> str:
    with pytest.raises(exceptions.Forbidden) as caught:
        call()
    assert f"Permission '{permission}' denied on resource (or it may not exist)." in caught.value.message
    return caught.value.message


# -- the stand-in itself --------------------------------------------------------------------------------------------
def test_a_grant_allows_and_a_list_of_another_prefix_is_refused(emulator, monkeypatch):
    make_bucket(emulator, "iam-unit")
    reader = "serviceAccount:reader@p.iam.gserviceaccount.com"
    condition = Condition.parse(
        'resource.name.startsWith("projects/_/buckets/iam-unit/objects/open/") || '
        '(resource.type == "storage.googleapis.com/Bucket" && '
        "api.getAttribute('storage.googleapis.com/objectListPrefix', '').startsWith('open/'))"
    )
    policy = BucketPolicy(
        "iam-unit",
        [Binding("roles/storage.objectViewer", (reader,), condition), Binding("roles/storage.admin", (OWNER,))],
    )
    iam = GcsIam(emulator, [policy])
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", iam.url(OWNER))
        owner = storage.Client(project=PROJECT)
        put(owner, "iam-unit", "open/a.txt", b"hello")
        put(owner, "iam-unit", "closed/b.txt")
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", iam.url(reader))
        client = storage.Client(project=PROJECT)
        assert [b.name for b in client.list_blobs("iam-unit", prefix="open/")] == ["open/a.txt"]
        assert client.bucket("iam-unit").blob("open/a.txt").download_as_bytes() == b"hello"
        refused(lambda: list(client.list_blobs("iam-unit", prefix="closed/")), "storage.objects.list")
        refused(lambda: list(client.list_blobs("iam-unit")), "storage.objects.list")
        refused(lambda: client.bucket("iam-unit").blob("closed/b.txt").download_as_bytes(), "storage.objects.get")
        refused(lambda: put(client, "iam-unit", "open/c.txt"), "storage.objects.create")
        refused(lambda: client.get_bucket("iam-unit"), "storage.buckets.get")
        assert iam.unknown == []
    finally:
        iam.close()


def test_the_403_is_gcs_own_text_and_shape(emulator, monkeypatch):
    make_bucket(emulator, "iam-text")
    iam = GcsIam(emulator, [BucketPolicy("iam-text", [])])
    try:
        stranger = "serviceAccount:lab@my-lab-project.iam.gserviceaccount.com"
        with urlopen(iam.url(stranger) + "/storage/v1/b/iam-text/o?prefix=x", timeout=10) as answer:
            raise AssertionError(f"allowed: {answer.status}")
    except OSError as exc:
        body = json.loads(exc.read())  # type: ignore[attr-defined]
        assert exc.code == 403  # type: ignore[attr-defined]
        message = (
            "lab@my-lab-project.iam.gserviceaccount.com does not have storage.objects.list access to the Google "
            "Cloud Storage bucket. Permission 'storage.objects.list' denied on resource (or it may not exist)."
        )
        assert body == {
            "error": {
                "code": 403,
                "message": message,
                "errors": [{"message": message, "domain": "global", "reason": "forbidden"}],
            }
        }
    finally:
        iam.close()
    assert denied_message(OWNER, "storage.objects.get", "object").startswith(
        "researcher@example.com does not have storage.objects.get access to the Google Cloud Storage object."
    )


@pytest.mark.parametrize(
    "expression",
    [
        'resource.name.endsWith(".csv")',
        "request.time < timestamp('2030-01-01T00:00:00Z')",
        '!resource.name.startsWith("x")',
        "api.getAttribute('iam.googleapis.com/modifiedGrantsByRole', []).hasOnly(['roles/x'])",
        'resource.name.startsWith("a"',
        'resource.service == "storage.googleapis.com"',
    ],
)
def test_a_condition_outside_the_subset_is_refused_loudly(expression):
    with pytest.raises(UnsupportedCondition, match="the GCS stand-in evaluates only"):
        Condition.parse(expression)


def test_the_subset_evaluates_as_iam_does():
    condition = Condition.parse(
        'resource.type != "storage.googleapis.com/Object" && (resource.name == "projects/_/buckets/b" || '
        "resource.name.startsWith('projects/_/buckets/c'))"
    )
    assert condition.holds(Request("projects/_/buckets/b", "storage.googleapis.com/Bucket"))
    assert not condition.holds(Request("projects/_/buckets/b/objects/x", "storage.googleapis.com/Object"))
    assert not condition.holds(Request("projects/_/buckets/d", "storage.googleapis.com/Bucket"))


def test_conditions_need_uniform_access_and_roles_must_be_known():
    with pytest.raises(UnsupportedCondition, match="only on buckets with uniform bucket-level access"):
        BucketPolicy(
            "b", [Binding("roles/storage.objectViewer", (OWNER,), Condition.parse('"a" == "a"'))], uniform_access=False
        )
    with pytest.raises(UnknownRole, match=r"roles/storage\.objectReader"):
        BucketPolicy("b", [Binding("roles/storage.objectReader", (OWNER,))])


def test_each_method_is_checked_against_the_resource_gcs_names():
    assert checks_for("GET", "/storage/v1/b/b/o", {"prefix": ["datasets/x/"]}, b"") == [
        Check("storage.objects.list", "b", list_prefix="datasets/x/")
    ]
    assert checks_for("GET", "/download/storage/v1/b/b/o/datasets%2Fa", {}, b"") == [
        Check("storage.objects.get", "b", "datasets/a")
    ]
    body = json.dumps({"sourceObjects": [{"name": "p/1"}, {"name": "p/2"}]}).encode()
    assert [c.permission for c in checks_for("POST", "/storage/v1/b/b/o/t/compose", {}, body)] == [
        "storage.objects.create",
        "storage.objects.get",
        "storage.objects.get",
    ]
    assert checks_for("GET", "/storage/v1/b", {}, b"") == "project"
    assert Check("storage.objects.list", "b", list_prefix="").request().resource_name == "projects/_/buckets/b"


# -- the lab's identities, with their bindings from the program ------------------------------------------------------
def test_a_worker_fetches_a_dataset_and_nothing_else(lab_gcs, program_policy, tmp_path):
    """Breakage 1: the workers' objectViewer was conditioned on object names only, and objects.list is checked
    against the bucket, so every fetch (it lists first) was refused."""
    from tests.data_sync.test_fetch import make_dataset, tree
    from toolkit.data import fetch
    from toolkit.data.bucket import BucketStore
    from toolkit.data.store import push

    iam, act_as = lab_gcs
    bucket = program_policy.bucket
    worker = member_with(program_policy, "roles/storage.objectViewer")
    owner = act_as(OWNER)  # `lab data push` from the researcher's machine
    source = make_dataset(tmp_path / "src", count=5)
    push(BucketStore(bucket), source, "toy")
    for name in (f"backups/{STACK}/20261201T080000Z/manifest.json", "mlflow-artifacts/1/model.pkl", "replica/dev/x"):
        put(owner, bucket, name)

    client = act_as(worker)
    [synced] = fetch.sync(f"gs://{bucket}/datasets", ["toy"], tmp_path / "data")  # the worker's own fetch
    assert tree(synced.path) == tree(source)
    assert refusals(iam) == []
    assert BucketStore(bucket).names() == ["toy"]  # `datasets/` itself, listed with a delimiter

    refused(lambda: list(client.list_blobs(bucket)), "storage.objects.list")
    refused(lambda: list(client.list_blobs(bucket, prefix="backups/")), "storage.objects.list")
    refused(lambda: list(client.list_blobs(bucket, prefix="datasets")), "storage.objects.list")  # not datasets/
    for name in (f"backups/{STACK}/20261201T080000Z/manifest.json", "mlflow-artifacts/1/model.pkl", "replica/dev/x"):
        refused(lambda n=name: client.bucket(bucket).blob(n).download_as_bytes(), "storage.objects.get")
    refused(lambda: put(client, bucket, "datasets/toy/versions/evil.json"), "storage.objects.create")
    blob = next(iter(client.list_blobs(bucket, prefix="datasets/toy/blobs/")))
    refused(lambda: client.bucket(bucket).blob(blob.name).delete(), "storage.objects.delete")
    refused(lambda: client.get_bucket(bucket), "storage.buckets.get")


def test_the_tracker_reads_and_writes_what_it_keeps(lab_gcs, program_policy, tmp_path):
    """The tracker's objectAdmin: its backups (toolkit.tracker.gcs), MLflow's proxied artifacts and the replica."""
    from tests.tracker.test_backups import tracker_with_db
    from toolkit.tracker import backups, gcs

    iam, act_as = lab_gcs
    bucket = program_policy.bucket
    client = act_as(member_with(program_policy, "roles/storage.objectAdmin"))
    made = backups.take(tracker_with_db(tmp_path / "tracker"), tmp_path / "made", stack=STACK)
    gcs.upload(made, bucket, STACK)
    assert gcs.download(bucket, STACK, tmp_path / "back").manifest == made.manifest
    for prefix in ("mlflow-artifacts/1/abc/artifacts/", f"replica/{STACK}/mlflow.db/"):
        put(client, bucket, prefix + "a", b"one")
        put(client, bucket, prefix + "a", b"two")  # an overwrite needs storage.objects.delete too
        assert [b.name for b in client.list_blobs(bucket, prefix=prefix)] == [prefix + "a"]
        assert client.bucket(bucket).blob(prefix + "a").download_as_bytes() == b"two"
        client.bucket(bucket).blob(prefix + "a").delete()
    assert refusals(iam) == []


def test_the_ci_identity_keeps_the_state_and_reads_only_the_final_backup(lab_gcs, program_policy, tmp_path):
    """Breakage 8: a scheduled `lab down` with the runner's documented grants reads and writes the Pulumi state
    (the diy backend's checkpoint and lock files) and reads the tracker's final backup, and nothing else."""
    from tests.gcp.pulumi_fakes import write_checkpoint
    from tests.tracker.test_backups import tracker_with_db
    from toolkit.gcp import pulumi_state
    from toolkit.tracker import backups, gcs

    iam, act_as = lab_gcs
    bucket = program_policy.bucket
    act_as(member_with(program_policy, "roles/storage.objectAdmin"))
    made = backups.take(tracker_with_db(tmp_path / "tracker"), tmp_path / "made", stack=STACK)
    gcs.upload(made, bucket, STACK)  # the tracker's final backup as it stops
    owner = act_as(OWNER)
    put(owner, bucket, "mlflow-artifacts/1/model.pkl")
    put(owner, bucket, "backups/prod/20261201T080000Z/manifest.json")
    local = tmp_path / "state"
    written = write_checkpoint(
        local, STACK, {"bucket_name": bucket}, [("gcp:compute/instance:Instance", "lab-dev-tracker")]
    )
    for path in (local / ".pulumi" / "meta.yaml", written):  # the state bucket as the diy backend left it
        put(owner, STATE_BUCKET, str(path.relative_to(local)), path.read_bytes())
    checkpoint = str(written.relative_to(local))

    client = act_as(CI)
    state = pulumi_state.read(f"gs://{STATE_BUCKET}", STACK)
    assert state is not None and state.outputs["bucket_name"] == bucket
    lock = f".pulumi/locks/organization/lab/{STACK}/0b5f.json"
    put(client, STATE_BUCKET, lock, b"{}")
    put(client, STATE_BUCKET, checkpoint, b"{}")  # the checkpoint written again
    client.bucket(STATE_BUCKET).blob(lock).delete()
    found = gcs.wait_for_backup(bucket, STACK, since=made.manifest.created_at, reason=made.manifest.reason, timeout=0)
    assert gcs.download(bucket, STACK, tmp_path / "back", backup_id=found).manifest == made.manifest
    assert refusals(iam) == []

    refused(lambda: list(client.list_blobs(bucket)), "storage.objects.list")
    refused(lambda: list(client.list_blobs(bucket, prefix="backups/prod/")), "storage.objects.list")
    refused(
        lambda: client.bucket(bucket).blob("mlflow-artifacts/1/model.pkl").download_as_bytes(), "storage.objects.get"
    )
    refused(lambda: put(client, bucket, f"backups/{STACK}/x"), "storage.objects.create")
    refused(
        lambda: client.bucket(bucket).blob(f"backups/{STACK}/{found}/manifest.json").delete(), "storage.objects.delete"
    )
    # pulumi destroy removes the bucket's two bindings: a read-modify-write of the bucket's policy
    assert iam.allowed(CI, Check("storage.buckets.getIamPolicy", bucket))
    assert iam.allowed(CI, Check("storage.buckets.setIamPolicy", bucket))
    assert not iam.allowed(CI, Check("storage.buckets.delete", bucket))
    assert not iam.allowed(CI, Check("storage.buckets.setIamPolicy", STATE_BUCKET))


def test_the_docs_give_the_ci_identity_every_grant_and_permission():
    """docs/gcp.md's table is what toolkit.gcp.ci_identity binds (the printed workflow's commands come from it)."""
    text = (ROOT / "docs" / "gcp.md").read_text()
    section = text[text.index("### The CI runner's identity") :]
    section = section[: section.index("`LAB_CRONTAB_FILE")]
    for role in (ci_identity.STATE_BUCKET_ROLE, ci_identity.BACKUPS_READER_ROLE):
        assert f"`{role}`" in section
    for role_id in (ci_identity.TEARDOWN_ROLE_ID, ci_identity.BUCKET_POLICY_ROLE_ID):
        assert f"custom `{role_id}`" in section
    for permission in (*ci_identity.PROJECT_PERMISSIONS, *ci_identity.BUCKET_POLICY_PERMISSIONS):
        family, _, verb = permission.rpartition(".")  # the table shortens `a.b.get`, `.list` to the verb
        assert f"`{permission}`" in section or (f"`{family}." in section and f"`.{verb}`" in section), permission
    assert ci_identity.backups_condition("BUCKET", "STACK").replace("||", "\\|\\|") in section
