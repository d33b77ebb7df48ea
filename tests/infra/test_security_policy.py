"""One test per rule of the security model, over the real program run under mocks (preview=False)."""

from __future__ import annotations

import ipaddress

import pulumi
import pytest

FIREWALL = "gcp:compute/firewall:Firewall"
INSTANCE = "gcp:compute/instance:Instance"
BUCKET = "gcp:storage/bucket:Bucket"
ACCOUNT = "gcp:serviceaccount/account:Account"
MLFLOW_PORT = "5000"


def ingress_rules(program):
    return [r for r in program.of_type(FIREWALL) if r.inputs.get("direction", "INGRESS") == "INGRESS"]


def allowed_ports(rule) -> set[str]:
    ports = set()
    for allow in rule.inputs.get("allows", []):
        assert allow["protocol"] == "tcp", f"{rule.name} allows protocol {allow['protocol']}"
        assert allow.get("ports"), f"{rule.name} allows every tcp port"
        ports.update(allow["ports"])
    return ports


def test_from_outside_only_ssh_is_reachable(run):
    program = run(workers=3)
    for rule in ingress_rules(program):
        if rule.inputs.get("sourceRanges"):
            assert allowed_ports(rule) == {"22"}, f"{rule.name} opens {allowed_ports(rule)} to address ranges"


def test_ssh_only_from_allowed_cidrs(run):
    program = run(allowedSshCidrs=["198.51.100.7/32", "203.0.113.0/24"])
    from_ranges = [r for r in ingress_rules(program) if r.inputs.get("sourceRanges")]
    assert len(from_ranges) == 1
    assert sorted(from_ranges[0].inputs["sourceRanges"]) == ["198.51.100.7/32", "203.0.113.0/24"]


def test_no_rule_is_open_to_the_world(run):
    program = run(workers=1)
    for rule in program.of_type(FIREWALL):
        for cidr in rule.inputs.get("sourceRanges", []):
            assert ipaddress.ip_network(cidr).prefixlen > 0, f"{rule.name} is open to the world ({cidr})"


def test_mlflow_port_only_from_workers_to_the_tracker(run):
    program = run(workers=2)
    rules = [r for r in ingress_rules(program) if MLFLOW_PORT in allowed_ports(r)]
    assert len(rules) == 1, "exactly one rule may open the MLflow port"
    rule = rules[0]
    assert not rule.inputs.get("sourceRanges"), "the MLflow port must not be reachable from address ranges"
    assert rule.inputs.get("sourceTags") == ["lab-worker"]
    assert rule.inputs.get("targetTags") == ["lab-tracker"]
    workers = [vm for vm in program.of_type(INSTANCE) if vm.name.startswith("worker")]
    tracker = program.one_named(INSTANCE, "tracker")
    assert all(vm.inputs["tags"] == ["lab-worker"] for vm in workers)
    assert tracker.inputs["tags"] == ["lab-tracker"], "only the tracker may carry the tracker tag"


def test_nothing_else_inbound(run):
    program = run(workers=3)
    rules = ingress_rules(program)
    assert len(rules) == 2, [r.name for r in rules]
    for rule in rules:
        assert rule.inputs.get("sourceRanges") or rule.inputs.get("sourceTags"), f"{rule.name} has no source"
        assert allowed_ports(rule) <= {"22", MLFLOW_PORT}
    network = program.one("gcp:compute/network:Network")
    assert network.inputs["autoCreateSubnetworks"] is False, "a dedicated network, not auto mode"


def test_every_vm_runs_as_the_dedicated_service_account(run):
    program = run(workers=3)
    account = program.one(ACCOUNT)
    email = f"{account.inputs['accountId']}@my-gcp-project.iam.gserviceaccount.com"
    vms = program.of_type(INSTANCE)
    assert len(vms) == 4
    for vm in vms:
        assert vm.inputs["serviceAccount"]["email"] == email, f"{vm.name} runs as another account"
        assert vm.inputs["serviceAccount"]["scopes"] == ["https://www.googleapis.com/auth/devstorage.read_write"]


def test_the_only_grant_is_object_admin_on_the_lab_bucket(run):
    program = run()
    iam = [r for r in program.resources if "iam" in r.type.lower() or "IAM" in r.type]
    assert [r.type for r in iam] == ["gcp:storage/bucketIAMMember:BucketIAMMember"]
    grant = iam[0]
    assert grant.inputs["role"] == "roles/storage.objectAdmin"
    assert grant.inputs["bucket"] == program.one(BUCKET).inputs["name"]
    assert grant.inputs["member"] == "serviceAccount:lab-dev-vms@my-gcp-project.iam.gserviceaccount.com"


def test_no_project_level_roles(run):
    program = run(workers=3)
    project_level = [r for r in program.resources if r.type.startswith(("gcp:projects/", "gcp:organizations/"))]
    assert project_level == [], [r.type for r in project_level]


def test_no_service_account_keys(run):
    program = run()
    assert program.of_type("gcp:serviceaccount/key:Key") == []


def test_bucket_is_private_versioned_and_labelled(run):
    bucket = run().one(BUCKET)
    assert bucket.inputs["uniformBucketLevelAccess"] is True
    assert bucket.inputs["publicAccessPrevention"] == "enforced"
    assert bucket.inputs["versioning"] == {"enabled": True}
    assert bucket.inputs["labels"]["lab"] == "dev"
    assert bucket.inputs["labels"]["managed-by"] == "lab"


def test_bucket_survives_destroy_unless_asked(run):
    bucket = run().one(BUCKET)
    assert bucket.options["retain_on_delete"] or bucket.options["protect"], "the bucket would be destroyed"
    assert not bucket.inputs.get("forceDestroy"), "force_destroy would delete its objects"


def test_destroy_data_flag_lets_the_bucket_go(run):
    bucket = run(destroyData=True).one(BUCKET)
    assert not bucket.options["retain_on_delete"] and not bucket.options["protect"]
    assert bucket.inputs["forceDestroy"] is True


def test_tracker_is_never_preemptible(run):
    for spot in (True, False):
        tracker = run(spot=spot).one_named(INSTANCE, "tracker")
        scheduling = tracker.inputs["scheduling"]
        assert scheduling["provisioningModel"] == "STANDARD"
        assert scheduling["preemptible"] is False
        assert scheduling["automaticRestart"] is True


def test_tracker_has_its_own_data_disk_and_static_internal_address(run):
    program = run()
    tracker = program.one_named(INSTANCE, "tracker")
    disk = program.one("gcp:compute/disk:Disk")
    assert disk.inputs["size"] == 30
    assert tracker.inputs["attachedDisks"][0]["source"] == f"{disk.name}-id"
    address = program.one("gcp:compute/address:Address")
    assert address.inputs["addressType"] == "INTERNAL"
    assert tracker.inputs["networkInterfaces"][0]["networkIp"] == "10.42.0.2"
    assert program.outputs["mlflow_internal_url"] == "http://10.42.0.2:5000"


def test_only_the_lab_key_can_log_in(run, ssh_key):
    for vm in run(workers=2).of_type(INSTANCE):
        metadata = vm.inputs["metadata"]
        assert metadata["ssh-keys"] == f"lab:{ssh_key.read_text().strip()}"
        assert metadata["block-project-ssh-keys"] == "TRUE"


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0"])
def test_world_open_ssh_is_refused(run, cidr):
    with pytest.raises(pulumi.RunError, match=r"opens SSH to the whole internet"):
        run(allowedSshCidrs=["203.0.113.0/24", cidr])


def test_missing_ssh_range_is_refused(run):
    with pytest.raises(pulumi.RunError, match=r"lab:allowedSshCidrs: required"):
        run(allowedSshCidrs=None)
