"""The path `lab up` takes on gcp, under mocks: stack config -> program -> outputs -> the hosts lab configures,
and the per-run choices (zone failover, on-demand fallback) that reach the program from the environment."""

from __future__ import annotations

import pytest

from toolkit.hosts import ssh as remote
from toolkit.labs import ssh as remote_lab

INSTANCE = "gcp:compute/instance:Instance"


def test_outputs_become_the_hosts_lab_configures(run):
    program = run(workers=2)
    hosts = remote_lab.hosts_from_outputs(program.outputs, "dev")
    assert [h.name for h in hosts] == ["tracker", "worker-1", "worker-2"]
    assert [h.role for h in hosts] == [remote.TRACKER, remote.WORKER, remote.WORKER]
    assert hosts[0].address == program.outputs["tracker_external_ip"]
    assert [h.address for h in hosts[1:]] == program.outputs["worker_external_ips"]
    assert len({h.address for h in hosts}) == 3


def test_a_stopped_worker_without_an_address_is_left_out():
    outputs = {"tracker_external_ip": "198.51.100.10", "worker_external_ips": [None, "198.51.100.12"]}
    assert [h.name for h in remote_lab.hosts_from_outputs(outputs, "dev")] == ["tracker", "worker-2"]


def test_no_tracker_means_the_lab_is_not_up():
    with pytest.raises(Exception, match="is not up"):
        remote_lab.hosts_from_outputs({}, "dev")


def test_workers_follow_the_zone_lab_chose_and_the_tracker_stays(run, monkeypatch):
    monkeypatch.setenv("LAB_WORKER_ZONE", "us-central1-c")
    program = run(workers=2)
    workers = [vm for vm in program.of_type(INSTANCE) if vm.name.startswith("worker-")]
    assert {vm.inputs["zone"] for vm in workers} == {"us-central1-c"}
    assert program.one_named(INSTANCE, "tracker").inputs["zone"] == "us-central1-a"
    assert program.outputs["worker_zone"] == "us-central1-c"


def test_a_zone_outside_the_stack_is_refused(run, monkeypatch):
    monkeypatch.setenv("LAB_WORKER_ZONE", "europe-west4-a")
    with pytest.raises(Exception, match="LAB_WORKER_ZONE=europe-west4-a is not gcp:zone or one of lab:zones"):
        run(workers=1)


def test_on_demand_fallback_makes_standard_workers(run, monkeypatch):
    monkeypatch.setenv("LAB_WORKER_ON_DEMAND", "1")
    program = run(workers=1, spot=True)
    (worker,) = [vm for vm in program.of_type(INSTANCE) if vm.name.startswith("worker-")]
    assert worker.inputs["scheduling"]["provisioningModel"] == "STANDARD"
    assert program.outputs["worker_spot"] is False


def test_workers_are_kept_running(run):
    for vm in run(workers=2).of_type(INSTANCE):
        if vm.name.startswith("worker-"):
            assert vm.inputs["desiredStatus"] == "RUNNING", "a preempted worker is started by the next up"


def test_the_bucket_is_the_persistent_stacks_and_never_imported(dev_config):
    """What `lab down` destroys (the lab's stack) holds no bucket; the persistent stack holds it and nothing else,
    with no `import` option, whatever the environment says (the retain-then-import design read LAB_ADOPT_BUCKET)."""
    from tests.infra.program import INFRA, run_program

    lab = run_program(dev_config)
    assert lab.of_type("gcp:storage/bucket:Bucket") == []
    assert lab.outputs["bucket_name"] == "my-gcp-project-lab-dev", "the hosts still learn the bucket's name"
    kept = run_program(dev_config, program=INFRA / "persistent", project="lab-persistent")
    assert [r.type for r in kept.resources] == ["lab:infra:ArtifactBucket", "gcp:storage/bucket:Bucket"]
    bucket = kept.one("gcp:storage/bucket:Bucket")
    assert bucket.options["import_id"] is None
    assert bucket.inputs["name"] == lab.outputs["bucket_name"]
    assert kept.outputs == {"bucket_name": bucket.inputs["name"], "bucket_url": f"gs://{bucket.inputs['name']}"}
