"""`lab down` on gcp: nothing is destroyed without a verified backup, one down at a time, a lab that is
already down (or never existed) is exit 0 even without the Pulumi CLI, and what is left is reported.

The engine is a recording stand-in (the real one needs the Pulumi CLI and GCP); the state files it reads
and rewrites are in the diy backend's format, and the flows, locks and CLI are lab's real code."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gcp.fake_gcp_api import Step
from tests.gcp.pulumi_fakes import gcp_settings, path_without_pulumi, write_checkpoint, write_lock
from toolkit.config import schema
from toolkit.errors import EXIT_BACKUP_FAILED, EXIT_LEFTOVERS, EXIT_LOCKED, EXIT_UNVERIFIED, LabError
from toolkit.gcp import pulumi_engine, pulumi_state
from toolkit.hosts import ssh as remote
from toolkit.labs import gcp as gcp_lab
from toolkit.tracker import backups

OUTPUTS = {
    "tracker_external_ip": "198.51.100.10",
    "bucket_name": "my-gcp-project-lab-dev",
    "worker_zone": "us-central1-a",
}
RESOURCES = [
    ("gcp:compute/instance:Instance", "tracker"),
    ("gcp:compute/instance:Instance", "worker-0"),
    ("gcp:compute/disk:Disk", "tracker-data"),
    ("lab:infra:WorkerPool", "worker"),
]


@pytest.fixture
def backend(isolated: Path) -> Path:
    return isolated / ".lab" / "pulumi"


@pytest.fixture
def settings() -> schema.Settings:
    return gcp_settings()


@pytest.fixture(autouse=True)
def no_google_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-credentials.json"))


class RecordingEngine:
    """Records the calls. A destroy rewrites the checkpoint as the engine would: a targeted destroy removes the
    targets and leaves the stack's outputs as they were (the program does not run); a full one empties it (or
    leaves `keep`)."""

    def __init__(self, backend: Path, calls: list[str], keep: list[tuple[str, str]] | None = None) -> None:
        self.backend, self.calls, self.keep = backend, calls, keep or []

    def preview(self, choices: pulumi_engine.RunChoices, say) -> pulumi_engine.Plan:
        raise AssertionError("down never previews")

    def up(self, choices: pulumi_engine.RunChoices, say) -> dict:
        raise AssertionError("down never runs up")

    def destroy(self, say, targets: list[str] | None = None) -> None:
        if targets:
            self.calls.append("destroy workers")
            state = pulumi_state.read(f"file://{self.backend}", "dev")
            left = [(r.type, r.name) for r in state.cloud_resources if r.urn not in targets]
            left += [(r.type, r.name) for r in state.resources if r.type.startswith("lab:")]
            write_checkpoint(self.backend, "dev", state.outputs, left)
            return
        self.calls.append("destroy")
        write_checkpoint(self.backend, "dev", {}, self.keep)


def names_in_state(backend: Path) -> list[str]:
    state = pulumi_state.read(f"file://{backend}", "dev")
    return sorted(r.name for r in state.cloud_resources) if state else []


def test_the_workers_go_first_and_a_failed_backup_keeps_the_tracker(settings, backend):
    write_checkpoint(backend, "dev", OUTPUTS, RESOURCES)
    calls: list[str] = []

    def backup(outputs):
        calls.append("backup")
        raise LabError("on tracker: database disk image is malformed")

    with pytest.raises(LabError) as caught:
        gcp_lab.teardown(settings, lambda: RecordingEngine(backend, calls), backup=backup, say=lambda m: None)
    assert calls == ["destroy workers", "backup"], "the GPUs stop first; nothing else goes after a failed backup"
    assert names_in_state(backend) == ["tracker", "tracker-data"], "the tracker and its data disk stay"
    assert caught.value.code == EXIT_BACKUP_FAILED
    message = caught.value.one_line()
    assert "the tracker was not destroyed" in message and "malformed" in message


def test_force_destroys_without_a_backup(settings, backend):
    write_checkpoint(backend, "dev", OUTPUTS, RESOURCES)
    calls: list[str] = []

    def backup(outputs):
        calls.append("backup")
        raise LabError("the tracker does not answer")

    said: list[str] = []
    done = gcp_lab.teardown(
        settings, lambda: RecordingEngine(backend, calls), backup=backup, say=said.append, force=True
    )
    assert calls == ["destroy workers", "backup", "destroy"]
    assert done is not None and done.backup is None
    assert any("without a backup" in line for line in said)


def test_workers_then_backup_then_the_rest(settings, backend, tmp_path):
    write_checkpoint(backend, "dev", OUTPUTS, RESOURCES)
    calls: list[str] = []
    seen: list[dict] = []

    def backup(outputs):
        calls.append("backup")
        seen.append(outputs)
        return tmp_path / "backup"

    said: list[str] = []
    done = gcp_lab.teardown(settings, lambda: RecordingEngine(backend, calls), backup=backup, say=said.append)
    assert calls == ["destroy workers", "backup", "destroy"]
    assert seen == [OUTPUTS], "the backup reaches the tracker from the stack's outputs"
    assert done.destroyed == 3, "instances and disks count; the stack, providers and components do not"
    assert done.leftovers == [] and done.backup_by == "ssh"
    assert any("could not ask GCP for leftovers" in line for line in said)
    assert not done.leftover_check.checked, "no credentials here: the check could not run"
    unverified = gcp_lab.leftovers_error(done.leftovers, done.leftover_check)
    assert unverified.code == EXIT_UNVERIFIED and "gcloud compute instances list" in unverified.one_line()
    assert names_in_state(backend) == []


def test_what_the_destroy_left_is_reported(settings, backend, tmp_path):
    write_checkpoint(backend, "dev", OUTPUTS, RESOURCES)
    left = [("gcp:compute/disk:Disk", "tracker-data")]
    done = gcp_lab.teardown(
        settings, lambda: RecordingEngine(backend, [], keep=left), backup=lambda o: tmp_path, say=lambda m: None
    )
    assert done.leftovers == ["Disk tracker-data (still in the Pulumi state)"]
    error = gcp_lab.leftovers_error(done.leftovers)
    assert error.code == EXIT_LEFTOVERS and "tracker-data" in error.one_line()


# -- without SSH: the tracker backs itself up as it stops ----------------------------------------------------


def unreachable(outputs):
    raise remote.Unreachable(remote.Host("tracker", "198.51.100.10", remote.TRACKER), "Connection timed out")


def without_the_key(outputs):
    """A CI runner has no copy of the lab's SSH key at all (the workflow `lab schedule --print` shows)."""
    raise remote.NoKey(Path("/home/runner/.ssh/id_ed25519"))


class LabBucket:
    """The lab's bucket behind GCS with IAM (tests/gcp/gcs_iam.py): this process is the CI runner (its documented
    grants, toolkit.gcp.ci_identity) unless `as_tracker()` (the program's objectAdmin for the tracker)."""

    def __init__(self, name: str, iam, monkeypatch: pytest.MonkeyPatch) -> None:
        self.name, self.iam, self.monkeypatch = name, iam, monkeypatch
        self.monkeypatch.setenv("STORAGE_EMULATOR_HOST", iam.url(CI))

    @contextlib.contextmanager
    def as_tracker(self) -> Iterator[None]:
        self.monkeypatch.setenv("STORAGE_EMULATOR_HOST", self.iam.url(TRACKER))
        try:
            yield
        finally:
            self.monkeypatch.setenv("STORAGE_EMULATOR_HOST", self.iam.url(CI))


TRACKER = "serviceAccount:lab-dev-tracker@my-gcp-project.iam.gserviceaccount.com"
CI = "serviceAccount:lab-teardown@my-gcp-project.iam.gserviceaccount.com"


@pytest.fixture
def bucket(emulator: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[LabBucket]:
    from infra.identity import TRACKER_BUCKET_ROLE
    from tests.gcp.gcs_iam import Binding, BucketPolicy, GcsIam
    from tests.gcp.iam_conditions import Condition
    from toolkit.gcp import ci_identity

    storage = pytest.importorskip("google.cloud.storage")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    client = storage.Client(project="my-gcp-project")
    name = OUTPUTS["bucket_name"]
    if client.lookup_bucket(name) is None:
        client.create_bucket(name)
    for blob in client.list_blobs(name):
        blob.delete()
    grants = ci_identity.grants("my-gcp-project", "state", name, "dev")
    runner = [
        Binding(g.role, (CI,), g.condition and Condition.parse(g.condition))
        for g in grants
        if g.where == f"gs://{name}"
    ]
    custom = {
        f"projects/my-gcp-project/roles/{ci_identity.BUCKET_POLICY_ROLE_ID}": frozenset(
            ci_identity.BUCKET_POLICY_PERMISSIONS
        )
    }
    iam = GcsIam(emulator, [BucketPolicy(name, [Binding(TRACKER_BUCKET_ROLE, (TRACKER,)), *runner], custom)])
    yield LabBucket(name, iam, monkeypatch)
    iam.close()
    assert not iam.unknown, iam.unknown
    assert [d for d in iam.denied if d[1] != "storage.buckets.get"] == []  # see tests/gcp/test_gcs_iam.py refusals


def tracker_backup(tmp_path: Path, bucket: LabBucket, reason: str) -> str:
    """What the tracker's lab-final-backup.service does as it stops: a backup of its DBs, uploaded."""
    import sqlite3

    from toolkit.tracker import backups, gcs

    tracker = tmp_path / f"tracker-{reason}"
    tracker.mkdir(exist_ok=True)
    with sqlite3.connect(tracker / "mlflow.db") as db:
        db.execute("create table if not exists runs (run_uuid text)")
        db.execute("insert into runs values ('run-before-the-stop')")
    made = backups.take(tracker, tmp_path / "tracker-backups", stack="dev", reason=reason)
    with bucket.as_tracker():
        gcs.upload(made, bucket.name, "dev")
    return made.manifest.id


@pytest.mark.parametrize("cannot_ssh", [unreachable, without_the_key])
def test_without_ssh_the_tracker_is_stopped_and_its_own_backup_verified_before_the_rest_goes(
    settings, backend, bucket, tmp_path, cannot_ssh
):
    write_checkpoint(backend, "dev", OUTPUTS, RESOURCES)
    tracker_backup(tmp_path, bucket, "timer")  # an hourly one from before: not the final backup
    calls: list[str] = []
    stopped: list[str] = []

    def stop_tracker(outputs):
        calls.append("stop tracker")
        stopped.append(tracker_backup(tmp_path, bucket, "shutdown"))

    said: list[str] = []
    done = gcp_lab.teardown(
        settings,
        lambda: RecordingEngine(backend, calls),
        backup=cannot_ssh,
        stop_tracker=stop_tracker,
        say=said.append,
    )
    assert calls == ["destroy workers", "stop tracker", "destroy"]
    assert done.backup_by == "tracker"
    assert done.backup.name == stopped[0], "the backup the tracker took as it stopped, downloaded here"
    assert backups.verify(done.backup).reason == "shutdown"
    assert any("asking the tracker to back itself up as it stops" in line for line in said)


def test_without_ssh_and_without_a_final_backup_the_tracker_stays(settings, backend, bucket, tmp_path):
    write_checkpoint(backend, "dev", OUTPUTS, RESOURCES)
    tracker_backup(tmp_path, bucket, "timer")
    calls: list[str] = []
    with pytest.raises(LabError) as caught:
        gcp_lab.teardown(
            settings,
            lambda: RecordingEngine(backend, calls),
            backup=unreachable,
            stop_tracker=lambda outputs: calls.append("stop tracker"),
            final_backup_timeout=1.0,
            say=lambda m: None,
        )
    assert calls == ["destroy workers", "stop tracker"]
    assert caught.value.code == EXIT_BACKUP_FAILED
    assert "no shutdown backup reached gs://my-gcp-project-lab-dev/backups/dev/" in caught.value.one_line()
    assert names_in_state(backend) == ["tracker", "tracker-data"]


def test_without_ssh_a_tracker_whose_stop_outlasts_30_s_is_waited_for_and_its_final_backup_kept(
    settings, backend, bucket, tmp_path, fake_gcp
):
    """Issue 24, breakage 2, through the timed Compute stand-in: the tracker's guest takes 80 s of GCP time to stop
    (the sweep, MLflow, then the final backup uploads), inside its 90-s window but past the client's 30-s read
    timeout, while zoneOperations.wait holds the request up to its 2-minute deadline. The scheduled no-SSH `lab down`
    waits the stop out and keeps the backup the tracker took; before the fix it exited 4 (EXIT_BACKUP_FAILED) with the
    tracker kept (and billing)."""
    outputs = {**OUTPUTS, "tracker_name": "lab-dev-tracker", "zone": "us-central1-a"}
    write_checkpoint(backend, "dev", outputs, RESOURCES)
    taken: list[str] = []
    fake_gcp.add(
        "lab-dev-tracker",
        shutdown=[
            Step("sweeps stopped", 20.0),
            Step("MLflow stopped", 10.0),
            Step("final backup uploaded", 50.0, lambda: taken.append(tracker_backup(tmp_path, bucket, "shutdown"))),
        ],
    )
    calls: list[str] = []
    said: list[str] = []
    done = gcp_lab.teardown(
        settings,
        lambda: RecordingEngine(backend, calls),
        backup=unreachable,
        stop_tracker=lambda o: gcp_lab.stop_tracker_vm(settings, o, say=said.append),
        say=said.append,
    )
    tracker = fake_gcp.instances["lab-dev-tracker"]
    assert (tracker.status, tracker.cut, tracker.stopped_after_s) == ("TERMINATED", False, 80.0)
    assert done.backup_by == "tracker" and done.backup.name == taken[0]
    assert calls == ["destroy workers", "destroy"]


def test_nothing_to_destroy_needs_no_engine(settings, backend):
    def no_engine():
        raise AssertionError("no engine is needed when the state shows nothing")

    assert gcp_lab.teardown(settings, no_engine, backup=lambda o: None, say=lambda m: None) is None
    write_checkpoint(backend, "dev", {}, [])  # a stack that exists but holds nothing
    assert gcp_lab.teardown(settings, no_engine, backup=lambda o: None, say=lambda m: None) is None


# -- through the CLI, as cron would run it -------------------------------------------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("PATH", path_without_pulumi())
    return {"PATH": path_without_pulumi()}


def test_down_of_a_lab_that_never_existed_is_exit_0_without_the_cli(lab, env):
    for _ in range(2):  # and again: already down
        ran = lab("down", "--target", "gcp", "--yes", env=env)
        assert ran.code == 0, ran.err
        assert "nothing to do" in ran.out


def test_down_with_resources_but_no_cli_fails_before_the_backup(lab, env, backend):
    write_checkpoint(backend, "dev", OUTPUTS, RESOURCES)
    ran = lab("down", "--target", "gcp", "--yes", env=env)
    assert ran.code == 1
    assert "Pulumi CLI" in ran.err and "lab doctor --install-pulumi" in ran.err
    assert "backup" not in ran.err.lower(), "no backup is attempted when nothing could be destroyed after it"


def test_a_second_down_is_refused_while_pulumi_holds_the_stack(lab, env, backend):
    write_checkpoint(backend, "dev", OUTPUTS, RESOURCES)
    write_lock(backend, "dev")
    ran = lab("down", "--target", "gcp", "--yes", env=env)
    assert ran.code == EXIT_LOCKED, ran.err
    assert "locked" in ran.err and "ci@runner-7 (pid 4242)" in ran.err
    assert len(ran.err.strip().splitlines()) == 1


def test_a_second_down_is_refused_while_another_lab_runs_here(lab, env, settings, isolated):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import sys, time
                from toolkit.labs import gcp as gcp_lab
                from toolkit.config import schema
                raw = {"gcp:project": "my-gcp-project", "gcp:region": "us-central1", "gcp:zone": "us-central1-a",
                       "lab:allowedSshCidrs": ["203.0.113.0/24"]}
                with gcp_lab.stack_lock(schema.resolve(raw, stack="dev").settings, "down"):
                    print("held", flush=True)
                    time.sleep(300)  # killed when the test is done with it
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        ran = lab("down", "--target", "gcp", "--yes", env=env)
        assert ran.code == EXIT_LOCKED, ran.err
        assert "busy" in ran.err and "`lab down`" in ran.err
        # refused at once: the lock is held for 300 s, and a wait would last until it is given up
        assert time.monotonic() - started < 60, "refused at once, not after waiting"
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    ran = lab("down", "--target", "gcp", "--yes", env=env)
    assert ran.code == 0, "the lock goes with the process that held it"


def test_destroy_data_needs_a_yes_without_a_terminal(lab, env, backend):
    write_checkpoint(backend, "dev", OUTPUTS, RESOURCES)
    ran = lab("down", "--target", "gcp", "--destroy-data", env=env)
    assert ran.code == 1
    assert "pass --yes" in ran.err
    assert (backend / ".pulumi" / "stacks" / "lab" / "dev.json").exists()


# -- the next `lab up` starts a stopped tracker ----------------------------------------------------------------


def test_up_starts_a_stopped_tracker_and_waits_until_it_runs(settings, fake_gcp):
    """Issue 24, breakage 4, through the timed Compute stand-in: the tracker a no-SSH `down` stopped (and kept) is
    TERMINATED with no address; `lab up` starts it (STAGING for 40 s of GCP time) and waits until it is RUNNING with
    its new address before configuring it. A running tracker is left alone."""
    outputs = {**OUTPUTS, "tracker_name": "lab-dev-tracker", "zone": "us-central1-a"}
    fake_gcp.add("lab-dev-tracker", status="TERMINATED", external_ip=None, start_s=40.0, next_ip="203.0.113.50")
    said: list[str] = []
    assert gcp_lab.start_stopped_tracker(settings, outputs, said.append) is True
    tracker = fake_gcp.instances["lab-dev-tracker"]
    assert (tracker.status, tracker.external_ip) == ("RUNNING", "203.0.113.50")
    assert any("starting lab-dev-tracker" in line for line in said), said
    assert gcp_lab.start_stopped_tracker(settings, outputs, said.append) is False, "running: nothing to do"
    assert [m for m, p in fake_gcp.requests if p.endswith("/start")] == ["POST"]
