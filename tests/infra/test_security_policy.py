"""One test per rule of the security model, over the real program run under mocks (preview=False)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import pulumi
import pytest

FIREWALL = "gcp:compute/firewall:Firewall"
INSTANCE = "gcp:compute/instance:Instance"
BUCKET = "gcp:storage/bucket:Bucket"
ACCOUNT = "gcp:serviceaccount/account:Account"
CUSTOM_ROLE = "gcp:projects/iAMCustomRole:IAMCustomRole"
PROJECT_MEMBER = "gcp:projects/iAMMember:IAMMember"
PROJECT_IAM = (CUSTOM_ROLE, PROJECT_MEMBER)
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


def test_ssh_inside_the_network_only_from_the_tracker_to_the_workers(run):
    """Detached sweeps run on the tracker and reach the workers over SSH: one rule, tcp:22 only, from the
    tracker's service account to the workers'. GCP matches a rule's source service accounts against the primary
    internal address of the VMs that run as them, and lets no rule mix accounts with tags or ranges
    (https://cloud.google.com/firewall/docs/firewalls#serviceaccounts)."""
    program = run(workers=2)
    accounts = emails(program)
    inside = [r for r in ingress_rules(program) if not r.inputs.get("sourceRanges")]
    to_ssh = [r for r in inside if "22" in allowed_ports(r)]
    assert len(to_ssh) == 1, f"exactly one rule may open SSH inside the network: {[r.name for r in to_ssh]}"
    rule = to_ssh[0]
    assert allowed_ports(rule) == {"22"}, f"{rule.name} opens {allowed_ports(rule)}"
    assert rule.inputs["sourceServiceAccounts"] == [accounts["tracker"]]
    assert rule.inputs["targetServiceAccounts"] == [accounts["worker"]]
    assert not rule.inputs.get("sourceTags") and not rule.inputs.get("targetTags")
    assert not rule.inputs.get("denies")
    workers = [vm for vm in program.of_type(INSTANCE) if vm.name.startswith("worker")]
    tracker = program.one_named(INSTANCE, "tracker")
    assert tracker.inputs["serviceAccount"]["email"] == accounts["tracker"]
    assert all(vm.inputs["serviceAccount"]["email"] == accounts["worker"] for vm in workers)
    assert accounts["tracker"] != accounts["worker"], "workers would reach each other's SSH"


def test_nothing_else_inbound(run):
    program = run(workers=3)
    rules = ingress_rules(program)
    assert len(rules) == 3, [r.name for r in rules]
    for rule in rules:
        sources = [key for key in ("sourceRanges", "sourceTags", "sourceServiceAccounts") if rule.inputs.get(key)]
        assert len(sources) == 1, f"{rule.name} has sources {sources}"
        assert rule.inputs.get("targetTags") or rule.inputs.get("targetServiceAccounts"), f"{rule.name} hits every VM"
        assert allowed_ports(rule) <= {"22", MLFLOW_PORT}
    role_of = {email: f"account:{role}" for role, email in emails(program).items()}
    opened = sorted(
        (
            sorted(allowed_ports(r)),
            sorted([*r.inputs.get("targetTags", []), *(role_of[e] for e in r.inputs.get("targetServiceAccounts", []))]),
        )
        for r in rules
    )
    assert opened == [
        (["22"], ["account:worker"]),  # from the tracker (detached sweeps)
        (["22"], ["lab-tracker", "lab-worker"]),  # from lab:allowedSshCidrs
        ([MLFLOW_PORT], ["lab-tracker"]),  # from the workers
    ], opened
    network = program.one("gcp:compute/network:Network")
    assert network.inputs["autoCreateSubnetworks"] is False, "a dedicated network, not auto mode"


def emails(program) -> dict[str, str]:
    """Each service account's email by its role (tracker, worker), as GCP derives it from the account id."""
    found = {}
    for account in program.of_type(ACCOUNT):
        role = account.inputs["accountId"].rsplit("-", 1)[-1]
        found[role] = f"{account.inputs['accountId']}@my-gcp-project.iam.gserviceaccount.com"
    return found


def test_the_tracker_and_the_workers_run_as_accounts_of_their_own(run):
    program = run(workers=3)
    accounts = emails(program)
    assert set(accounts) == {"tracker", "worker"}
    vms = program.of_type(INSTANCE)
    assert len(vms) == 4
    for vm in vms:
        role = "tracker" if vm.name == "tracker" else "worker"
        assert vm.inputs["serviceAccount"]["email"] == accounts[role], f"{vm.name} runs as another account"
    tracker = program.one_named(INSTANCE, "tracker")
    assert tracker.inputs["serviceAccount"]["scopes"] == [
        "https://www.googleapis.com/auth/devstorage.read_write",
        "https://www.googleapis.com/auth/compute",  # its IAM grant there: the worker VMs only (below)
    ]
    for vm in vms:
        if vm is not tracker:
            assert vm.inputs["serviceAccount"]["scopes"] == ["https://www.googleapis.com/auth/devstorage.read_only"], (
                f"{vm.name}'s token may write the bucket"
            )


def bucket_grants(program) -> dict[str, Any]:
    iam = [r for r in program.resources if "iam" in r.type.lower() and r.type not in PROJECT_IAM]
    assert {r.type for r in iam} == {"gcp:storage/bucketIAMMember:BucketIAMMember"}, [r.type for r in iam]
    by_member = {}
    for grant in iam:
        assert grant.inputs["bucket"] == program.one(BUCKET).inputs["name"], f"{grant.name} is on another bucket"
        assert grant.inputs["member"] not in by_member, "one grant per account"
        by_member[grant.inputs["member"]] = grant
    return by_member


def test_only_the_tracker_may_write_the_bucket(run):
    program = run()
    accounts = emails(program)
    grants = bucket_grants(program)
    assert set(grants) == {f"serviceAccount:{accounts['tracker']}", f"serviceAccount:{accounts['worker']}"}
    tracker = grants[f"serviceAccount:{accounts['tracker']}"]
    assert tracker.inputs["role"] == "roles/storage.objectAdmin"
    assert not tracker.inputs.get("condition")


def test_workers_can_read_the_datasets_and_nothing_else_and_never_delete_or_overwrite(run):
    """Notebook code on a worker must not erase the off-site backups (versioning does not stop an object admin
    from deleting old versions). objectViewer holds no storage.objects.create/delete/update: its permissions are
    listed at https://cloud.google.com/storage/docs/access-control/iam-roles."""
    program = run()
    grant = bucket_grants(program)[f"serviceAccount:{emails(program)['worker']}"]
    assert grant.inputs["role"] == "roles/storage.objectViewer"
    bucket = program.one(BUCKET).inputs["name"]
    condition = grant.inputs["condition"]
    # objects under datasets/, and lists of that prefix (checked against the bucket): what a fetch does, through
    # GCS's IAM rules, is in tests/gcp/test_gcs_iam.py
    assert condition["expression"] == (
        f'resource.name.startsWith("projects/_/buckets/{bucket}/objects/datasets/") || '
        '(resource.type == "storage.googleapis.com/Bucket" && '
        'api.getAttribute("storage.googleapis.com/objectListPrefix", "").startsWith("datasets/"))'
    )
    assert condition["title"]


# The predefined role's permissions as GCP lists them (https://cloud.google.com/storage/docs/access-control/iam-roles,
# "Storage Object Viewer (roles/storage.objectViewer)"): reading objects and folders, nothing that writes.
OBJECT_VIEWER = {
    "resourcemanager.projects.get",
    "resourcemanager.projects.list",
    "storage.folders.get",
    "storage.folders.list",
    "storage.managedFolders.get",
    "storage.managedFolders.list",
    "storage.objects.get",
    "storage.objects.list",
}
WRITES = {"storage.objects.create", "storage.objects.delete", "storage.objects.update", "storage.objects.setIamPolicy"}


def mentions(value: Any, text: str) -> bool:
    if isinstance(value, dict):
        return any(mentions(v, text) for v in value.values())
    if isinstance(value, list):
        return any(mentions(v, text) for v in value)
    return isinstance(value, str) and text in value


def test_workers_cannot_write_or_delete_the_datasets(run):
    """`lab data push` writes datasets/ from the laptop; workers only read it (issue 16). Every resource that names
    the workers' account is the account itself, a firewall rule (network only), a worker VM running as it with a
    read-only storage scope, or the one bucket grant: a role without a permission that creates, overwrites or
    deletes an object, under datasets/."""
    program = run(workers=2)
    worker = emails(program)["worker"]
    naming = [r for r in program.resources if mentions(r.inputs, worker)]
    kinds = sorted({r.type for r in naming if r.type not in (ACCOUNT, FIREWALL)})
    assert kinds == [INSTANCE, "gcp:storage/bucketIAMMember:BucketIAMMember"], kinds
    for vm in program.of_type(INSTANCE):
        if vm.inputs["serviceAccount"]["email"] == worker:
            assert vm.inputs["serviceAccount"]["scopes"] == ["https://www.googleapis.com/auth/devstorage.read_only"]
    (grant,) = [r for r in naming if r.type == "gcp:storage/bucketIAMMember:BucketIAMMember"]
    assert grant.inputs["role"] == "roles/storage.objectViewer"
    assert not OBJECT_VIEWER & WRITES
    assert "/objects/datasets/" in grant.inputs["condition"]["expression"]


def test_deleted_objects_are_kept_for_a_week(run):
    bucket = run().one(BUCKET)
    assert bucket.inputs["softDeletePolicy"] == {"retentionDurationSeconds": 7 * 24 * 3600}


def test_no_project_level_roles_but_the_trackers_conditioned_hold_on_the_workers(run):
    program = run(workers=3)
    project_level = [r for r in program.resources if r.type.startswith(("gcp:projects/", "gcp:organizations/"))]
    assert sorted(r.type for r in project_level) == sorted(PROJECT_IAM), [r.type for r in project_level]
    grant = program.one(PROJECT_MEMBER)
    assert grant.inputs["role"].startswith("projects/my-gcp-project/roles/"), "a custom role, never a predefined one"
    assert grant.inputs["condition"]["expression"], "never without its condition"


# -- the tracker may read, start and stop the worker VMs, and nothing else of Compute Engine ------------------------
# How GCP reads the condition, for the shape the program writes (a disjunction of `resource.type != "T"` and
# `resource.name == "N"`): https://cloud.google.com/iam/docs/configuring-resource-based-access (resource names of VMs
# are projects/P/zones/Z/instances/NAME; other resource types pass a `resource.type !=` clause).
CLAUSE = re.compile(r'resource\.type != "(?P<type>[^"]+)"|resource\.name == "(?P<name>[^"]+)"')


def allows(expression: str, resource_type: str, resource_name: str) -> bool:
    verdicts = []
    for clause in expression.split(" || "):
        found = CLAUSE.fullmatch(clause)
        assert found, f"a clause this reading does not know: {clause!r}"
        if found["type"] is not None:
            verdicts.append(resource_type != found["type"])
        else:
            verdicts.append(resource_name == found["name"])
    return any(verdicts)


def vm(zone: str, name: str) -> str:
    return f"projects/my-gcp-project/zones/{zone}/instances/{name}"


def test_the_tracker_can_read_start_and_stop_only_the_worker_vms(run):
    program = run(workers=2)
    accounts = emails(program)
    role = program.one(CUSTOM_ROLE)
    assert sorted(role.inputs["permissions"]) == [
        "compute.instances.get",
        "compute.instances.start",
        "compute.instances.stop",
        "compute.zoneOperations.get",
    ], "nothing that creates, deletes, changes metadata (SSH keys) or reads disks"
    assert re.fullmatch(r"lab_dev_workers_\d{21}", role.inputs["roleId"]), role.inputs["roleId"]
    grant = program.one(PROJECT_MEMBER)
    assert grant.inputs["member"] == f"serviceAccount:{accounts['tracker']}"
    assert grant.inputs["role"] == f"projects/my-gcp-project/roles/{role.inputs['roleId']}"
    expression = grant.inputs["condition"]["expression"]
    instance = "compute.googleapis.com/Instance"
    workers = [r.inputs["name"] for r in program.of_type(INSTANCE) if r.name.startswith("worker")]
    assert workers == ["lab-dev-worker-0", "lab-dev-worker-1"]
    for name in workers:
        assert allows(expression, instance, vm("us-central1-a", name))
    tracker = program.one_named(INSTANCE, "tracker").inputs["name"]
    for other in (
        vm("us-central1-a", tracker),
        vm("us-central1-a", "lab-dev-worker-2"),  # not (yet) one of the lab's workers
        vm("us-central1-a", "lab-dev-worker-0-x"),
        vm("us-central1-a", "lab-dev-worker-x-worker-0"),  # another stack's worker, stack "dev-worker-x"
        vm("us-central1-b", "lab-dev-worker-0"),  # same name, another zone: not this lab's VM
        vm("us-central1-a", "someone-elses-vm"),
    ):
        assert not allows(expression, instance, other), other
    assert allows(expression, "compute.googleapis.com/ZoneOperation", "projects/my-gcp-project/zones/x/operations/y")


def test_the_worker_vms_named_follow_the_zone_they_run_in(run, monkeypatch):
    monkeypatch.setenv("LAB_WORKER_ZONE", "us-central1-c")
    expression = run(workers=1).one(PROJECT_MEMBER).inputs["condition"]["expression"]
    assert allows(expression, "compute.googleapis.com/Instance", vm("us-central1-c", "lab-dev-worker-0"))
    assert not allows(expression, "compute.googleapis.com/Instance", vm("us-central1-a", "lab-dev-worker-0"))


def test_the_workers_account_gets_no_compute_grant_and_no_workers_no_role(run):
    program = run(workers=3)
    worker = f"serviceAccount:{emails(program)['worker']}"
    assert [g.name for g in program.of_type(PROJECT_MEMBER) if g.inputs["member"] == worker] == []
    assert all(not r.type.startswith("gcp:compute/") or "IAM" not in r.type for r in program.resources)
    none = run(workers=0)
    assert none.of_type(CUSTOM_ROLE) == [] and none.of_type(PROJECT_MEMBER) == []


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


def test_only_dataset_upload_parts_expire_sooner_and_no_live_object_but_them(run):
    """Old versions go after 30 days. A dataset upload's parts (deleted once composed; their noncurrent versions
    and a killed upload's leftovers would be billed for 30 days) go after a day, or two: the rules name the datasets'
    folder and the parts' suffix, so no MLflow artifact or backup, whatever its name, is ever deleted by them."""
    from toolkit.data.bucket import PART_SUFFIX, BucketStore

    rules = run().one(BUCKET).inputs["lifecycleRules"]
    assert all(rule["action"] == {"type": "Delete"} for rule in rules), rules
    conditions = [rule["condition"] for rule in rules]
    assert {"daysSinceNoncurrentTime": 30, "withState": "ARCHIVED"} in conditions, conditions

    def deletes(condition: dict, key: str) -> bool:
        prefixes, suffixes = condition.get("matchesPrefixes"), condition.get("matchesSuffixes")
        return (not prefixes or key.startswith(tuple(prefixes))) and (not suffixes or key.endswith(tuple(suffixes)))

    store = BucketStore("lab-bucket")
    part = store._key("images", "parts", "ab" * 32 + ".00003" + PART_SUFFIX)
    blob = store._key("images", "blobs", "ab" * 32)
    live = [c for c in conditions if c.get("withState") != "ARCHIVED"]  # these delete current objects too
    assert live and all(deletes(c, part) for c in live), live
    for key in (blob, store._key("images", "versions", "v1.json"), "1/0a1b/artifacts/shard.part", "backups/x.part"):
        assert not any(deletes(c, key) for c in live), f"a rule would delete the live object {key}"
    sooner = [c for c in conditions if c.get("withState") == "ARCHIVED" and c["daysSinceNoncurrentTime"] < 30]
    assert any(deletes(c, part) for c in sooner), sooner
    # The other rule that deletes sooner is the replica's (test_the_replicas_deleted_files_go_sooner): no blob either.
    assert not any(deletes(c, blob) for c in sooner), sooner


def test_the_replicas_deleted_files_go_sooner_and_nothing_else_does(run):
    """Litestream deletes LTX files all the time; in a versioned bucket each stays a noncurrent version. Under the
    replica's folder they go after NONCURRENT_DAYS (then soft delete's week), not the bucket's 30 days; no
    live file, backup or artifact is touched by that rule."""
    from toolkit.config import replica_bucket
    from toolkit.tracker import replica

    inputs = run().one(BUCKET).inputs
    conditions = [rule["condition"] for rule in inputs["lifecycleRules"]]
    ltx = replica.default_url("dev", "lab-bucket", Path("/unused")).removeprefix("gs://lab-bucket/")
    ltx += "/mlflow.db/ltx/0/0000000000000001-0000000000000001.ltx"

    def deletes(condition: dict, key: str) -> bool:
        prefixes = condition.get("matchesPrefixes")
        return not condition.get("matchesSuffixes") and (not prefixes or key.startswith(tuple(prefixes)))

    for_replica = [c for c in conditions if deletes(c, ltx)]
    assert min(c["daysSinceNoncurrentTime"] for c in for_replica) == replica_bucket.NONCURRENT_DAYS < 30, for_replica
    assert all(c.get("withState") == "ARCHIVED" for c in for_replica), "only noncurrent versions, never live files"
    sooner = [c for c in for_replica if c["daysSinceNoncurrentTime"] == replica_bucket.NONCURRENT_DAYS]
    for key in ("backups/dev/2026-12-07T00-00-00Z/manifest.json", "1/0a1b/artifacts/model.pt", "datasets/x/blobs/ab"):
        assert not any(deletes(c, key) for c in sooner), key
    assert inputs["softDeletePolicy"]["retentionDurationSeconds"] == replica_bucket.SOFT_DELETE_DAYS * 24 * 3600
