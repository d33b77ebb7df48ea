"""The budget guard's stop of a gcp lab's workers, through the Compute API seam (toolkit.gcp.api) against the REST
stand-in built from GCP's documented answers (tests/gcp/fake_gcp_api.py: instances.stop,
https://cloud.google.com/compute/docs/reference/rest/v1/instances/stop, answers an Operation,
https://cloud.google.com/compute/docs/reference/rest/v1/zoneOperations#Operation, waited for with
zoneOperations.wait). The tracker's account may stop the workers and no other VM (infra/identity.py's custom role
under an IAM condition naming the workers): the stand-in refuses the rest with GCE's 403."""

from __future__ import annotations

import pytest

from tests.gcp.fake_gcp_api import Step
from toolkit.budget import tracker
from toolkit.gcp import api

PROJECT = "my-gcp-project"
ZONE = "us-central1-a"
WORKERS = ["lab-dev-worker-0", "lab-dev-worker-1"]


def handed(*instances: str) -> dict:
    """The `gcp` part of what `lab up` hands the tracker's guard (GcpLab.budget_workers)."""
    return {
        "project": PROJECT,
        "what": "A100",
        "workers": [{"name": f"worker-{i}", "instance": name, "zone": ZONE} for i, name in enumerate(instances)],
    }


@pytest.fixture
def vms(fake_gcp):
    fake_gcp.add("lab-dev-tracker")
    for name in WORKERS:
        fake_gcp.add(name)
    fake_gcp.controllable = set(WORKERS)  # the IAM condition of the tracker's worker control role
    return fake_gcp


def test_the_guard_stops_every_worker_vm_and_waits_for_each_operation(vms):
    said: list[str] = []
    did = tracker.stop_vms(handed(*WORKERS), said.append)
    assert did == ["worker worker-0: VM lab-dev-worker-0 stopped", "worker worker-1: VM lab-dev-worker-1 stopped"]
    assert {name: vms.instances[name].status for name in WORKERS} == dict.fromkeys(WORKERS, "TERMINATED")
    assert vms.instances["lab-dev-tracker"].status == "RUNNING", "the tracker, the lab's memory, stays up"
    posts = [path for method, path in vms.requests if method == "POST"]
    assert [p for p in posts if p.endswith("/stop")] == [
        f"/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances/{name}/stop" for name in WORKERS
    ]
    assert sum(p.endswith("/wait") for p in posts) == 2, "each stop waits for its zone operation"
    assert all(op["user"] == vms.caller and op["operationType"] == "stop" for op in vms.operations.values())
    assert "stopping the VM lab-dev-worker-0 (us-central1-a) through the Compute API" in said


def test_a_stopped_or_missing_worker_and_a_refusal_do_not_stop_the_rest(vms):
    vms.instances["lab-dev-worker-0"].status = "TERMINATED"  # preempted, or powered off when idle
    did = tracker.stop_vms(handed("lab-dev-tracker", "lab-dev-worker-0", "lab-dev-worker-9", "lab-dev-worker-1"), print)
    assert did[0].startswith("worker worker-0: VM lab-dev-tracker did not stop: "), did[0]
    assert (
        f"Required 'compute.instances.stop' permission for 'projects/{PROJECT}/zones/{ZONE}/instances/lab-dev-tracker'"
        in did[0]
    ), did[0]
    assert did[1] == "worker worker-1: VM lab-dev-worker-0 stopped", "stopping a stopped VM is no error"
    assert did[2] == "worker VM lab-dev-worker-9 does not exist"
    assert did[3] == "worker worker-3: VM lab-dev-worker-1 stopped"
    assert vms.instances["lab-dev-tracker"].status == "RUNNING"


def test_the_tracker_account_may_stop_exactly_the_workers():
    identity = pytest.importorskip("infra.identity")
    assert "compute.instances.stop" in identity.WORKER_CONTROL_PERMISSIONS
    on_instances = {p for p in identity.WORKER_CONTROL_PERMISSIONS if p.startswith("compute.instances.")}
    assert on_instances == {"compute.instances.get", "compute.instances.start", "compute.instances.stop"}, (
        "nothing else on the VMs (no delete, no setMetadata)"
    )
    condition = identity.worker_control_condition(PROJECT, ZONE, WORKERS)
    for name in WORKERS:
        assert f'resource.name == "projects/{PROJECT}/zones/{ZONE}/instances/{name}"' in condition
    assert "lab-dev-tracker" not in condition, "the tracker cannot stop itself"


def test_a100s_that_take_their_time_to_stop_are_reported_stopped(vms):
    """Issue 24, breakage 2: an A100 worker's guest takes its time to stop (trials interrupted, checkpoints flushed):
    60 s for on-demand workers (`up --fallback-on-demand`; their window is 90 s), the spot window's 30 s for spot ones.
    The stop's zone operation stays RUNNING that long, and zoneOperations.wait holds the request meanwhile; the guard
    waits it out instead of calling them "did not stop" at its 30-s read timeout."""
    vms.instances["lab-dev-worker-0"].shutdown = [Step("trials interrupted, checkpoints flushed", 60.0)]
    vms.instances["lab-dev-worker-1"].spot = True
    vms.instances["lab-dev-worker-1"].shutdown = [Step("trials interrupted, checkpoints flushed", 45.0)]
    did = tracker.stop_vms(handed(*WORKERS), print)
    assert did == ["worker worker-0: VM lab-dev-worker-0 stopped", "worker worker-1: VM lab-dev-worker-1 stopped"]
    assert vms.instances["lab-dev-worker-0"].stopped_after_s == 60.0
    assert vms.instances["lab-dev-worker-1"].stopped_after_s == 30.0, "a spot VM is powered off at its window's end"


def test_a_worker_gcp_is_still_stopping_at_the_deadline_is_reported_stopping(vms, monkeypatch):
    """When the guard's own deadline passes with the operation still RUNNING, the VM is stopping, not "did not stop"."""
    monkeypatch.setattr(api, "OPERATION_TIMEOUT_S", 20.0)
    vms.instances["lab-dev-worker-0"].shutdown = [Step("trials interrupted, checkpoints flushed", 80.0)]
    did = tracker.stop_vms(handed("lab-dev-worker-0"), print)
    assert did == ["worker worker-0: VM lab-dev-worker-0 is stopping (GCP's stop operation is still running)"]
