"""Day one to day two of a gcp lab, through the strict stand-ins, with one world carried from step to step: one
Compute with time (tests/gcp/fake_gcp_api.py), one gcp-storage-emulator behind GCS with IAM (tests/gcp/gcs_iam.py)
holding the artifact bucket and the Pulumi state bucket, one Pulumi engine (tests/gcp/pulumi_fakes.py StrictPulumi,
its state in the state bucket, what it creates and deletes applied to Compute and to the bucket's policy).

What runs for real: lab's `up` (gcp_lab.provision: quota pre-flight, the persistent stack then the lab's stack) and
`lab status`'s view of the VMs (toolkit.labs.ssh.gcp_hosts); the programs (infra/, infra/persistent/) under Pulumi's
mocks; a worker's dataset fetch (toolkit.data.fetch) with the bindings the program declares; the tracker's Reviver
(toolkit.gcp.revive) on GCP's clock with the tracker's conditioned Compute grant; the budget guard's stop of the
workers (toolkit.budget.tracker.stop_vms); a no-SSH `lab down` (gcp_lab.teardown with stop_tracker_vm, as `_down`
hands them) by the CI runner's identity (toolkit.gcp.ci_identity's grants, no SSH key); the tracker's final backup as
its unit runs it (toolkit.tracker.agent backup --reason shutdown, in the tracker's stop chain read from the role's
units, tests/gcp/test_stop_budget.py); the next day's restore choosing and fetching that backup from the bucket
(toolkit.tracker.recovery.from_bucket), with a full integrity check.

What is represented, and where it runs for real: the sweep is a process on the tracker (lab-sweep@.service), which
needs VM-like hosts; here it is its study in a real Optuna storage on the tracker's data (trials done, one running
when the lab goes down) and its unit in the tracker's stop chain. A detached sweep runs for real in
tests/labs/ssh/test_ssh_target.py::test_a_detached_sweep_goes_on_without_the_laptop, the guard's stop on hosts in
tests/labs/ssh/test_budget_guard.py, and a running trial re-queued when its sweep resumes in toolkit.sweeps.dispatch
(Sweep._requeue_stale). The restore's install (`mlflow db upgrade`, several seconds) runs in
tests/tracker/test_recovery.py::test_the_buckets_newer_backup_wins_over_the_controllers.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.request import Request as HttpRequest
from urllib.request import urlopen

import pytest

from tests.gcp.fake_gcp_api import FakeGcp, Step
from tests.gcp.gcs_iam import Binding, BucketPolicy, GcsIam
from tests.gcp.iam_conditions import Condition
from tests.gcp.pulumi_fakes import GCP_STACK, StrictPulumi, gcp_settings
from tests.gcp.test_stop_budget import FINAL_BACKUP, ROLE, stop_paths, units
from toolkit.config import schema
from toolkit.gcp import ci_identity

storage = pytest.importorskip("google.cloud.storage")
exceptions = pytest.importorskip("google.api_core.exceptions")
optuna = pytest.importorskip("optuna")

PROJECT = "my-gcp-project"
STACK = "dev"
BUCKET = "my-gcp-project-lab-dev"
STATE_BUCKET = "my-gcp-project-lab-state"
OWNER = "user:researcher@example.com"  # the project's owner: storage.admin inherited from the project
CI = f"serviceAccount:lab-teardown@{PROJECT}.iam.gserviceaccount.com"
TRACKER = f"serviceAccount:lab-dev-tracker@{PROJECT}.iam.gserviceaccount.com"
WORKER = f"serviceAccount:lab-dev-worker@{PROJECT}.iam.gserviceaccount.com"
TRACKER_VM = "lab-dev-tracker"
WORKERS = ["lab-dev-worker-0", "lab-dev-worker-1"]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGxhYnRlc3RrZXlsYWJ0ZXN0a2V5bGFidGVzdGtleQ lab@test\n"
WORKER_START_S = 40.0  # GCP seconds a worker spends in STAGING when started
WORKER_SHUTDOWN_S = 45.0  # what a worker's guest would take to stop (trials interrupted): a spot VM gets 30


@dataclass
class Week:
    """The world the week runs in, and the lab's settings."""

    gcp: FakeGcp
    iam: GcsIam
    engine: StrictPulumi
    settings: schema.Settings
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    said: list[str] = field(default_factory=list)

    def act_as(self, member: str) -> storage.Client:
        """This process acts as `member` towards GCS (its own port of the stand-in) and Compute (the operations'
        caller)."""
        self.monkeypatch.setenv("STORAGE_EMULATOR_HOST", self.iam.url(member))
        self.gcp.caller = member.split(":", 1)[1]
        return storage.Client(project=PROJECT)

    @property
    def tracker_data(self) -> Path:
        return self.tmp / "tracker-disk"  # /srv/lab on the tracker: tracker/ (the DBs), backups/

    def refusals(self) -> list[tuple[str, str, str]]:
        # google-cloud-storage's background bucket lookups take a 403 as an answer (tests/gcp/test_gcs_iam.py)
        return [d for d in self.iam.denied if d[1] != "storage.buckets.get"]


def make_bucket(emulator: str, name: str) -> None:
    """A bucket made as the project's owner makes it (buckets.insert is a project permission): on the emulator."""
    body = f'{{"name": "{name}"}}'.encode()
    request = HttpRequest(f"{emulator}/storage/v1/b?project={PROJECT}", body, {"Content-Type": "application/json"})
    urlopen(request, timeout=10).close()


@pytest.fixture
def week(emulator: str, fake_gcp: FakeGcp, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Week]:
    key = tmp_path / "id_ed25519.pub"  # the researcher's public key; the CI runner has no private key at all
    key.write_text(KEY)
    raw = {"lab:workers": 2, "lab:sshPublicKeyPath": str(key), "lab:stateBackend": f"gs://{STATE_BUCKET}"}
    custom = {
        f"projects/{PROJECT}/roles/{ci_identity.BUCKET_POLICY_ROLE_ID}": frozenset(
            ci_identity.BUCKET_POLICY_PERMISSIONS
        )
    }
    ci = [
        (g.where.removeprefix("gs://"), Binding(g.role, (CI,), Condition.parse(g.condition) if g.condition else None))
        for g in ci_identity.grants(PROJECT, STATE_BUCKET, BUCKET, STACK)
    ]
    # The program's bindings are not here: the engine applies them as it creates them, and removes them at destroy.
    artifact = BucketPolicy(
        BUCKET, [Binding("roles/storage.admin", (OWNER,)), *[b for w, b in ci if w == BUCKET]], custom_roles=custom
    )
    state = BucketPolicy(
        STATE_BUCKET, [Binding("roles/storage.admin", (OWNER,)), *[b for w, b in ci if w == STATE_BUCKET]]
    )
    make_bucket(emulator, STATE_BUCKET)  # `lab init` made it (toolkit.gcp.state_bucket)
    iam = GcsIam(emulator, [artifact, state])
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    engine_gcs = storage.Client(project=PROJECT)  # Pulumi's provider creating the bucket, as the project's owner
    engine = StrictPulumi(f"gs://{STATE_BUCKET}", engine_gcs, {**GCP_STACK, **raw}, compute=fake_gcp, iam=iam)
    world = Week(fake_gcp, iam, engine, gcp_settings(**raw), tmp_path, monkeypatch)
    yield world
    iam.close()
    assert not iam.unknown, f"requests the stand-in could not judge: {iam.unknown}"


# -- the steps ------------------------------------------------------------------------------------------------------
def up(week: Week) -> dict[str, Any]:
    from toolkit.labs import gcp as gcp_lab

    week.act_as(OWNER)
    calls = len(week.engine.calls)
    done = gcp_lab.provision(
        week.settings,
        week.engine,
        confirm=gcp_lab.confirm_with(True),
        say=week.said.append,
        show=lambda plan, lines, total: None,
    )
    assert done is not None
    assert week.engine.calls[calls:] == ["lab: preview", "lab-persistent: up", "lab: up"], "nothing imported"
    kept, _ = week.engine.persistent()._load()
    [bucket] = [r for r in kept.values() if r["type"] == "gcp:storage/bucket:Bucket"]
    assert bucket["inputs"]["uniformBucketLevelAccess"] is True, "the GCS stand-in models uniform access only"
    assert not [line for line in week.said if "quotas could not be read" in line], week.said
    assert any(path.endswith("/regions/us-central1") for _, path in week.gcp.requests), "the quota pre-flight ran"
    assert gcp_lab.start_stopped_tracker(week.settings, done.outputs, week.said.append) is False, "it runs"
    return done.outputs


def lab_status(week: Week) -> dict[str, str]:
    """What `lab status` shows of the VMs: each host and its state, read from the state and the Compute API."""
    from toolkit.labs import ssh as remote_lab

    acting, caller = os.environ["STORAGE_EMULATOR_HOST"], week.gcp.caller
    week.act_as(OWNER)  # the researcher's `lab status`, whoever acts in the step
    try:
        view = remote_lab.gcp_hosts(week.settings)
    finally:
        week.monkeypatch.setenv("STORAGE_EMULATOR_HOST", acting)
        week.gcp.caller = caller
    assert view.live, view.note
    return {s.host.name: s.status for s in view.states}


def vms_are_up(week: Week) -> None:
    assert lab_status(week) == {"tracker": "RUNNING", "worker-1": "RUNNING", "worker-2": "RUNNING"}
    assert {n: i.spot for n, i in week.gcp.instances.items()} == {TRACKER_VM: False, **dict.fromkeys(WORKERS, True)}
    for name in WORKERS:
        week.gcp.instances[name].start_s = WORKER_START_S
        week.gcp.instances[name].shutdown = [Step("trials interrupted, checkpoints flushed", WORKER_SHUTDOWN_S)]


def dataset_by_a_worker(week: Week, into: Path) -> None:
    from tests.data_sync.test_fetch import tree
    from toolkit.data import fetch

    client = week.act_as(WORKER)
    [synced] = fetch.sync(f"gs://{BUCKET}/datasets", ["toy"], into)
    assert tree(synced.path) == tree(week.tmp / "toy"), "the worker has the dataset the researcher pushed"
    assert week.refusals() == []
    hourly = next(iter(week.act_as(OWNER).list_blobs(BUCKET, prefix=f"backups/{STACK}/"))).name
    client = week.act_as(WORKER)
    for call in (
        lambda: list(client.list_blobs(BUCKET, prefix="backups/")),
        lambda: client.bucket(BUCKET).blob(hourly).download_as_bytes(),
    ):
        with pytest.raises(exceptions.Forbidden):
            call()
    week.iam.denied.clear()


def tracker_backup(week: Week, reason: str) -> None:
    """The tracker's agent as its units run it (lab-backup.timer; lab-final-backup.service's ExecStop with
    --reason shutdown), with the tracker's own identity towards the bucket."""
    from toolkit.tracker import agent

    before = os.environ.get("STORAGE_EMULATOR_HOST", "")
    os.environ["STORAGE_EMULATOR_HOST"] = week.iam.url(TRACKER)  # the tracker's metadata server
    try:
        argv = ["backup", "--data", str(week.tracker_data), "--keep", "5", "--days", "7"]
        assert agent.main([*argv, "--bucket", BUCKET, "--stack", STACK, "--reason", reason]) == 0
    finally:
        os.environ["STORAGE_EMULATOR_HOST"] = before


def sweep_storage(data: Path) -> str:
    """The sweeps' Optuna storage in a tracker's DB folder (toolkit.tracker.backups.TRACKER_DBS' optuna.db)."""
    return f"sqlite:///{data / 'optuna.db'}"


def a_sweep_runs(week: Week) -> list[str]:
    """The sweep's study on the tracker (3 trials done, one running) and the tracker's stop chain from the role's
    units, the sweep's first: what the VM's guest does when it is stopped."""
    from tests.tracker.test_backups import tracker_with_db

    tracker_with_db(week.tracker_data / "tracker")
    study = optuna.create_study(study_name="week", storage=sweep_storage(week.tracker_data / "tracker"))
    for value in (0.9, 0.5, 0.7):
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        study.tell(trial, value)
    study.ask().suggest_float("lr", 1e-4, 1e-1, log=True)  # running when the lab goes down
    tracker_backup(week, "timer")  # the hourly one

    found = units()
    chain = max(
        (path for path in stop_paths(found) if path[-1] == FINAL_BACKUP),
        key=lambda path: sum(found[n]["budget"] for n in path),
    )
    assert chain[0] == "lab-sweep@.service", chain
    unit = (ROLE / "templates" / f"{FINAL_BACKUP}.j2").read_text()
    assert "toolkit.tracker.agent backup" in unit and "--reason shutdown" in unit
    steps = [Step(name, found[name]["budget"]) for name in chain[:-1]]
    steps.append(Step(FINAL_BACKUP, found[FINAL_BACKUP]["budget"], lambda: tracker_backup(week, "shutdown")))
    week.gcp.instances[TRACKER_VM].shutdown = steps
    return chain


def tracker_may_control(week: Week) -> set[str]:
    """The VMs the tracker's Compute role is conditioned on, as the lab's stack applied it (infra/identity.py)."""
    resources, _ = week.engine._load()
    [grant] = [r for r in resources.values() if r["type"] == "gcp:projects/iAMMember:IAMMember"]
    assert grant["inputs"]["member"] == TRACKER
    return set(
        re.findall(
            r'resource\.name == "projects/[^/]+/zones/[^/]+/instances/([^"]+)"',
            grant["inputs"]["condition"]["expression"],
        )
    )


def preempted_and_revived(week: Week, outputs: dict[str, Any]) -> None:
    from toolkit.gcp import revive

    week.act_as(OWNER)  # the state, read here as the researcher
    week.gcp.controllable = tracker_may_control(week)
    week.act_as(TRACKER)
    assert week.gcp.controllable == set(WORKERS), "the tracker may start and stop the workers, not itself"
    week.gcp.preempt(WORKERS[1])
    until(lambda: week.gcp.instances[WORKERS[1]].status == "TERMINATED", "the preemption")
    assert week.gcp.instances[WORKERS[1]].stopped_after_s == 30.0, "cut at the spot window"
    assert lab_status(week)["worker-2"] == "TERMINATED"

    workers = [revive.Worker(f"worker-{i}", name, outputs["worker_zone"]) for i, name in enumerate(WORKERS, 1)]
    reviver = revive.Reviver(PROJECT, workers, what="A100", clock=week.gcp.now)  # the sweep's loop, in GCP's time
    lines: list[str] = []
    asked = week.gcp.now()
    while not reviver.running("worker-2"):
        assert week.gcp.now() - asked < 600, lines
        line = reviver.poll("worker-2")
        if not lines or lines[-1] != line:
            lines.append(line)
        time.sleep(0.005)
    assert lines[0] == "worker-2: stopped (preempted, or powered off when idle): starting it", lines
    assert any(line.startswith("worker-2: starting (asked GCP ") for line in lines), lines
    assert week.gcp.now() - asked >= WORKER_START_S, "the start took GCP's time"
    assert lab_status(week)["worker-2"] == "RUNNING"
    assert reviver.poll("worker-1") == "worker-1: running"
    assert [op["user"] for op in week.gcp.operations.values() if op["operationType"] == "start"] == [TRACKER[15:]]


def guard_stops_the_workers(week: Week, outputs: dict[str, Any]) -> None:
    from toolkit.budget import tracker

    handed = {  # what `lab up` hands the guard (GcpLab.detached_place's "gcp")
        "project": PROJECT,
        "what": "A100",
        "workers": [
            {"name": f"worker-{i}", "instance": n, "zone": outputs["worker_zone"]} for i, n in enumerate(WORKERS, 1)
        ],
    }
    did = tracker.stop_vms(handed, week.said.append)
    assert did == [f"worker worker-{i}: VM {n} stopped" for i, n in enumerate(WORKERS, 1)], did
    assert [week.gcp.instances[n].stopped_after_s for n in WORKERS] == [30.0, 30.0], "each took its window"
    assert lab_status(week) == {"tracker": "RUNNING", "worker-1": "TERMINATED", "worker-2": "TERMINATED"}


def down_from_ci(week: Week, chain: list[str]) -> Path:
    from toolkit.hosts import ssh as remote
    from toolkit.labs import gcp as gcp_lab
    from toolkit.tracker import backups

    week.act_as(CI)
    week.gcp.controllable = None  # the runner's custom role is project-wide (ci_identity.PROJECT_PERMISSIONS)
    running = optuna.load_study(study_name="week", storage=sweep_storage(week.tracker_data / "tracker"))
    assert [t.state.name for t in running.trials][-1] == "RUNNING", "the sweep is running"

    def ssh_backup(outputs: dict[str, Any]) -> Path | None:
        remote.access_of(week.settings)  # the runner has no copy of the lab's key: NoKey
        raise AssertionError("the CI runner logged in")

    stopped: dict[str, Any] = {}
    as_down_hands_it = functools.partial(gcp_lab.stop_tracker_vm, week.settings, say=week.said.append)

    def stop_tracker(outputs: dict[str, Any]) -> None:
        as_down_hands_it(outputs)
        vm = week.gcp.instances[TRACKER_VM]
        stopped.update(status=vm.status, shut_down=list(vm.shut_down), cut=vm.cut, after=vm.stopped_after_s)

    calls = len(week.engine.calls)
    done = gcp_lab.teardown(
        week.settings, lambda: week.engine, backup=ssh_backup, say=week.said.append, stop_tracker=stop_tracker
    )
    assert done is not None
    assert stopped["status"] == "TERMINATED" and stopped["shut_down"] == chain, stopped
    assert not stopped["cut"] and stopped["after"] <= 90.0, f"the stop chain outlasted the 90-s window: {stopped}"
    assert done.backup_by == "tracker" and done.backup is not None
    assert backups.verify(done.backup).reason == "shutdown"
    assert week.engine.calls[calls:] == ["lab: destroy workers", "lab: destroy"], "the persistent stack stays"
    assert week.gcp.instances == {} and done.leftovers == [] and done.leftover_check.checked
    assert not [b for b in week.iam.policies[BUCKET].bindings if WORKER in b.members or TRACKER in b.members]
    assert week.refusals() == [], week.refusals()
    return done.backup


def next_morning(week: Week, final: Path) -> None:
    from tests.data_sync.test_fetch import tree
    from toolkit.gcp import artifact_bucket as lab_bucket
    from toolkit.tracker import backups, recovery

    assert lab_bucket.in_state(lab_bucket.persistent_state(week.settings), BUCKET)
    outputs = up(week)
    assert outputs["bucket_name"] == BUCKET
    vms_are_up(week)
    owner = week.act_as(OWNER)
    kept = {b.name.split("/")[0] for b in owner.list_blobs(BUCKET)}
    assert kept == {"datasets", "backups"}, kept
    assert owner.bucket(BUCKET).blob(f"backups/{STACK}/{final.name}/manifest.json").exists()
    dataset_by_a_worker(week, week.tmp / "worker-data-day-2")  # its binding is back with the lab's stack
    assert tree(week.tmp / "worker-data-day-2") != {}

    week.act_as(TRACKER)  # the new tracker, its data disk empty: the newest state there is
    said: list[str] = []
    [candidate] = recovery.from_bucket(BUCKET, STACK, week.tmp / "new-tracker" / "backups", said.append)
    assert candidate.backup_id == final.name, "the final backup, newer than the hourly one"
    fetched = candidate.fetch()
    assert backups.verify(fetched.path).reason == "shutdown"
    study = optuna.load_study(study_name="week", storage=sweep_storage(fetched.path))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3 + ["RUNNING"]
    assert study.best_value == 0.5


def until(done: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:.0f} s"
        time.sleep(0.01)


# -- the week -------------------------------------------------------------------------------------------------------
def test_a_week_from_the_first_up_to_the_next_morning(week: Week):
    from tests.data_sync.test_fetch import make_dataset
    from toolkit.data.bucket import BucketStore
    from toolkit.data.store import push

    # day 1: up; the researcher pushes a dataset; a worker fetches it
    outputs = up(week)
    vms_are_up(week)
    week.act_as(OWNER)
    push(BucketStore(BUCKET), make_dataset(week.tmp / "toy", count=5), "toy")
    chain = a_sweep_runs(week)
    dataset_by_a_worker(week, week.tmp / "worker-data")
    # a spot worker is preempted; the tracker starts it again
    preempted_and_revived(week, outputs)
    # the budget guard stops the workers
    guard_stops_the_workers(week, outputs)
    # night: the scheduled `lab down` from CI, no SSH, while the sweep runs
    final = down_from_ci(week, chain)
    # day 2: the next `up` has everything kept
    next_morning(week, final)
