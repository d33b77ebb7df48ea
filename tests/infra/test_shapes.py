"""What the program builds for different stacks: worker counts, spot and standard, GPU families."""

from __future__ import annotations

import pulumi
import pytest

INSTANCE = "gcp:compute/instance:Instance"


def workers_of(program):
    return [vm for vm in program.of_type(INSTANCE) if vm.name.startswith("worker-")]


@pytest.mark.parametrize("count", [0, 1, 3])
def test_worker_count(run, count):
    program = run(workers=count)
    workers = workers_of(program)
    assert len(workers) == count
    names = [f"lab-dev-worker-{i}" for i in range(count)]
    assert sorted(vm.inputs["name"] for vm in workers) == names
    assert program.outputs["worker_names"] == names
    assert len(program.outputs["worker_internal_ips"]) == count
    assert len(program.outputs["worker_external_ips"]) == count
    # The tracker, bucket and network are there whatever the worker count.
    assert program.one_named(INSTANCE, "tracker").inputs["name"] == "lab-dev-tracker"
    assert program.one("gcp:storage/bucket:Bucket")


def test_spot_workers(run):
    for vm in workers_of(run(workers=2, spot=True)):
        scheduling = vm.inputs["scheduling"]
        assert scheduling["provisioningModel"] == "SPOT"
        assert scheduling["preemptible"] is True
        assert scheduling["automaticRestart"] is False
        assert scheduling["onHostMaintenance"] == "TERMINATE"
        assert scheduling["instanceTerminationAction"] == "STOP"


def test_standard_workers(run):
    for vm in workers_of(run(workers=2, spot=False)):
        scheduling = vm.inputs["scheduling"]
        assert scheduling["provisioningModel"] == "STANDARD"
        assert scheduling["preemptible"] is False
        assert scheduling["onHostMaintenance"] == "TERMINATE", "GPU VMs cannot live-migrate"
        assert "instanceTerminationAction" not in scheduling


@pytest.mark.parametrize("machine_type", ["a2-highgpu-1g", "g2-standard-8"])
def test_a2_and_g2_carry_their_own_gpus(run, machine_type):
    (vm,) = workers_of(run(workerMachineType=machine_type))
    assert vm.inputs["machineType"] == machine_type
    assert not vm.inputs.get("guestAccelerators")


def test_n1_with_t4s_gets_guest_accelerators(run):
    program = run(workers=2, workerMachineType="n1-standard-8", workerGpu="nvidia-tesla-t4", workerGpuCount=2)
    for vm in workers_of(program):
        assert vm.inputs["machineType"] == "n1-standard-8"
        assert vm.inputs["guestAccelerators"] == [{"type": "nvidia-tesla-t4", "count": 2}]


def test_worker_boot_disk_image_and_labels(run):
    (vm,) = workers_of(run(workerImage="projects/my/global/images/family/mine", workerDiskGb=200))
    params = vm.inputs["bootDisk"]["initializeParams"]
    assert params == {"image": "projects/my/global/images/family/mine", "size": 200, "type": "pd-ssd"}
    assert vm.inputs["labels"] == {"lab": "dev", "managed-by": "lab", "role": "worker"}
    assert vm.inputs["metadata"]["install-nvidia-driver"] == "True"
    assert vm.options["delete_before_replace"], "fixed names need delete-before-replace"


@pytest.mark.parametrize(
    ("machine_type", "disk"),
    [
        ("a3-ultragpu-8g", "hyperdisk-balanced"),  # A3 Ultra (H200) and A4 (B200) take Hyperdisk only
        ("a4-highgpu-8g", "hyperdisk-balanced"),
        ("a3-highgpu-1g", "pd-ssd"),
        ("a2-highgpu-1g", "pd-ssd"),
        ("g2-standard-8", "pd-ssd"),
    ],
)
def test_worker_boot_disk_type_follows_the_machine_series(run, machine_type, disk):
    (vm,) = workers_of(run(workerMachineType=machine_type))
    assert vm.inputs["bootDisk"]["initializeParams"]["type"] == disk


def test_tracker_machine_type_and_disk(run):
    program = run(trackerMachineType="e2-standard-4", trackerDiskGb=100)
    assert program.one_named(INSTANCE, "tracker").inputs["machineType"] == "e2-standard-4"
    assert program.one("gcp:compute/disk:Disk").inputs["size"] == 100


def test_outputs_the_toolkit_needs(run):
    outputs = run(workers=1).outputs
    assert outputs == {
        "project": "my-gcp-project",
        "region": "us-central1",
        "zone": "us-central1-a",
        "ssh_user": "lab",
        "bucket_name": "my-gcp-project-lab-dev",
        "bucket_url": "gs://my-gcp-project-lab-dev",
        "tracker_service_account": "lab-dev-tracker@my-gcp-project.iam.gserviceaccount.com",
        "worker_service_account": "lab-dev-worker@my-gcp-project.iam.gserviceaccount.com",
        "tracker_name": "lab-dev-tracker",
        "tracker_internal_ip": "10.42.0.2",
        "tracker_external_ip": outputs["tracker_external_ip"],
        "mlflow_internal_url": "http://10.42.0.2:5000",
        "tracker_status": "RUNNING",
        "worker_zone": "us-central1-a",
        "worker_spot": True,
        "worker_names": ["lab-dev-worker-0"],
        "worker_statuses": ["RUNNING"],
        "worker_internal_ips": outputs["worker_internal_ips"],
        "worker_external_ips": outputs["worker_external_ips"],
    }
    assert outputs["tracker_external_ip"].startswith("198.51.100.")
    assert outputs["worker_internal_ips"][0].startswith("10.42.0.")
    assert outputs["worker_external_ips"][0].startswith("198.51.100.")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"workerMachineType": "n1-standard-8", "workerGpu": None}, r"n1-standard-8 needs lab:workerGpu"),
        ({"workerMachineType": "a2-highgpu-1g", "workerGpu": "nvidia-tesla-t4"}, r"comes with its own GPUs"),
        ({"workers": -1}, r"lab:workers: must be at least 0, got -1"),
        (
            {"workerGpuCount": -2, "workerMachineType": "n1-standard-4", "workerGpu": "nvidia-tesla-t4"},
            r"lab:workerGpuCount: must be at least 1",
        ),
        ({"gcp:zone": "europe-west4-a"}, r"zone europe-west4-a is not in region us-central1"),
        ({"workers": "three"}, r"lab:workers: expected a whole number, got 'three'"),
    ],
)
def test_impossible_stacks_are_refused(run, changes, message):
    with pytest.raises(pulumi.RunError, match=message):
        run(**changes)


def test_missing_public_key_is_a_clear_error(run, tmp_path):
    missing = tmp_path / "nope.pub"
    with pytest.raises(pulumi.RunError, match=r"lab:sshPublicKeyPath: no public key at .*nope.pub"):
        run(sshPublicKeyPath=str(missing))


def test_stack_name_shapes_resource_names(dev_config):
    from tests.infra.program import run_program

    program = run_program(dev_config, stack="Team.Research_2")
    assert program.outputs["tracker_name"] == "lab-team-research-2-tracker"
    accounts = sorted(a.inputs["accountId"] for a in program.of_type("gcp:serviceaccount/account:Account"))
    assert accounts == ["lab-team-research-2-tracker", "lab-team-research-2-worker"]
    assert all(6 <= len(account) <= 30 for account in accounts)


def test_a_stopped_tracker_is_started_again_by_the_next_up(run):
    """Issue 24, breakage 4: the provider reconciles a VM's status only when desired_status is set (its Read writes
    the live status into desired_status only then: terraform-provider-google
    google/services/compute/resource_compute_instance.go, resourceComputeInstanceRead, `if d.Get("desired_status") !=
    ""`), and `lab up` refreshes first (toolkit/gcp/pulumi_engine.py, refresh=True), so a TERMINATED tracker shows as
    a diff that Update resolves by starting it. Without it a stopped tracker stayed stopped after `lab up`."""
    tracker = run().one_named(INSTANCE, "tracker")
    assert tracker.inputs["desiredStatus"] == "RUNNING"
    assert tracker.inputs["allowStoppingForUpdate"] is True
    assert all(vm.inputs["desiredStatus"] == "RUNNING" for vm in workers_of(run(workers=1))), "as the workers"
