"""What `pulumi destroy` of the lab's stack asks of GCP, resource by resource, and the IAM permission each call needs:
a stand-in for pulumi-gcp's Delete functions, which cannot run here.

`lab down` runs `pulumi destroy` without --refresh (toolkit/gcp/pulumi_engine.py AutomationEngine.destroy; the CLI
refreshes only when told or when Pulumi.yaml says `options: refresh: always`: pulumi/pulumi
pkg/cmd/pulumi/operations/io.go getRefreshOption@1b594989), so the provider's Read never runs; each resource gets
its Delete only. pulumi-terraform-bridge's Delete builds the state and applies a destroy diff, nothing else
(pulumi/pulumi-terraform-bridge pkg/tfbridge/provider.go Provider.Delete@59de6c66), which calls the Terraform
resource's Delete. Those, in hashicorp/terraform-provider-google (the same at v5.0.0, v6.0.0, v7.0.0 and
e03b7622, 2026-08; pulumi-gcp 8-10 bridge v6-v8 of it):
- google_compute_instance: resourceComputeInstanceDelete (google/services/compute/resource_compute_instance.go):
  instances.delete, then the operation (its boot disk goes with it: boot_disk.auto_delete defaults to true, and
  attached disks are attached with autoDelete false, expandAttachedDisk); no detach, no get;
- google_compute_disk: resourceComputeDiskDelete (resource_compute_disk.go): disks.get first (404 ends it; a 403 is
  an error), then, for each instance in the disk's `users`, instances.get and instances.detachDisk (each waited
  for), then disks.delete and its operation;
- google_compute_address, _subnetwork (regional), _firewall, _network (global): a DELETE and its operation
  (resource_compute_address.go, _subnetwork.go, _firewall.go, _network.go);
- every operation is polled with zoneOperations/regionOperations/globalOperations.get (compute_operation.go
  ComputeOperationWaiter.QueryOp);
- google_service_account: serviceAccounts.delete only (google/services/resourcemanager/resource_google_service_
  account.go resourceGoogleServiceAccountDelete); google_project_iam_custom_role: roles.delete only
  (resource_google_project_iam_custom_role.go resourceGoogleProjectIamCustomRoleDelete);
- google_project_iam_member, google_storage_bucket_iam_member: a read-modify-write of the policy, then a read back
  (google/tpgiamresource/resource_iam_member.go resourceIamMemberDelete, iam.go iamPolicyReadModifyWrite; the
  updaters: resourcemanager/iam_project.go Projects.GetIamPolicy/SetIamPolicy, storage/iam_storage_bucket.go
  GET/PUT b/BUCKET/iam).
Each method's permission is the one its reference page names ("IAM Permissions"):
https://cloud.google.com/compute/docs/reference/rest/v1/<resource>/<method> (instances/delete:
compute.instances.delete, disks/get: compute.disks.get, zoneOperations/get: compute.zoneOperations.get, ...),
https://cloud.google.com/iam/docs/reference/rest/v1/projects.serviceAccounts/delete (iam.serviceAccounts.delete),
.../projects.roles/delete (iam.roles.delete),
https://cloud.google.com/resource-manager/reference/rest/v1/projects/getIamPolicy (resourcemanager.projects.
getIamPolicy; setIamPolicy likewise), https://cloud.google.com/storage/docs/json_api/v1/buckets/getIamPolicy
(storage.buckets.getIamPolicy; setIamPolicy likewise).

The engine deletes a resource only after every resource that depends on it (its dependents go first), so the
order here is any such order; a disk deleted while an instance of the state still uses it gets the detach calls.
A resource type not listed is an error: add how its Delete calls GCP before the program makes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.infra.program import ProgramRun, Registered


@dataclass(frozen=True)
class Call:
    method: str  # the REST method
    permission: str  # what its reference page says it needs
    on: str = "project"  # where the permission is checked: the project, or the bucket (a bucket's own policy)


ZONE_OPERATION = Call("zoneOperations.get", "compute.zoneOperations.get")
REGION_OPERATION = Call("regionOperations.get", "compute.regionOperations.get")
GLOBAL_OPERATION = Call("globalOperations.get", "compute.globalOperations.get")
PROJECT_POLICY = (
    Call("projects.getIamPolicy", "resourcemanager.projects.getIamPolicy"),
    Call("projects.setIamPolicy", "resourcemanager.projects.setIamPolicy"),
    Call("projects.getIamPolicy", "resourcemanager.projects.getIamPolicy"),
)
BUCKET_POLICY = (
    Call("buckets.getIamPolicy", "storage.buckets.getIamPolicy", on="bucket"),
    Call("buckets.setIamPolicy", "storage.buckets.setIamPolicy", on="bucket"),
    Call("buckets.getIamPolicy", "storage.buckets.getIamPolicy", on="bucket"),
)
INSTANCE = "gcp:compute/instance:Instance"
DISK = "gcp:compute/disk:Disk"
DELETES: dict[str, tuple[Call, ...]] = {
    INSTANCE: (Call("instances.delete", "compute.instances.delete"), ZONE_OPERATION),
    DISK: (Call("disks.get", "compute.disks.get"), Call("disks.delete", "compute.disks.delete"), ZONE_OPERATION),
    "gcp:compute/address:Address": (Call("addresses.delete", "compute.addresses.delete"), REGION_OPERATION),
    "gcp:compute/subnetwork:Subnetwork": (Call("subnetworks.delete", "compute.subnetworks.delete"), REGION_OPERATION),
    "gcp:compute/firewall:Firewall": (Call("firewalls.delete", "compute.firewalls.delete"), GLOBAL_OPERATION),
    "gcp:compute/network:Network": (Call("networks.delete", "compute.networks.delete"), GLOBAL_OPERATION),
    "gcp:serviceaccount/account:Account": (Call("serviceAccounts.delete", "iam.serviceAccounts.delete"),),
    "gcp:projects/iAMCustomRole:IAMCustomRole": (Call("roles.delete", "iam.roles.delete"),),
    "gcp:projects/iAMMember:IAMMember": PROJECT_POLICY,
    "gcp:storage/bucketIAMMember:BucketIAMMember": BUCKET_POLICY,
}
# resourceComputeDiskDelete, for each instance still using the disk
DETACH = (
    Call("instances.get", "compute.instances.get"),
    Call("instances.detachDisk", "compute.instances.detachDisk"),
    ZONE_OPERATION,
)


def _key(urn: str) -> tuple[str, str]:
    """(type, name) of a URN (urn:pulumi:STACK::PROJECT::[PARENT$]TYPE::NAME)."""
    _, _, qualified, name = urn.split("::", 3)
    return qualified.rsplit("$", 1)[-1], name


def _uses(instance: Registered) -> set[str]:
    """The disks (their mocked ids, `<name>-id`) an instance has attached."""
    return {str(disk.get("source")) for disk in instance.inputs.get("attachedDisks") or []}


def destroy_calls(run: ProgramRun) -> list[Call]:
    """Every call `pulumi destroy` of what `run` registered makes, in an order the engine may take (dependents
    first; among the ready ones, the last registered first, as a serial destroy walks the state back)."""
    left = [r for r in run.resources if not r.type.startswith("lab:")]  # components call nothing
    unknown = sorted({r.type for r in left} - DELETES.keys())
    assert not unknown, f"the stand-in does not know how pulumi-gcp deletes {unknown}: add it to DELETES"
    needs = {(r.type, r.name): {_key(urn) for urn in r.options.get("dependencies", ())} for r in left}
    calls: list[Call] = []
    while left:
        ready = [r for r in left if not any((r.type, r.name) in needs[(o.type, o.name)] for o in left if o is not r)]
        assert ready, "the program's dependencies are a cycle"
        gone = ready[-1]
        left.remove(gone)
        calls += DELETES[gone.type]
        if gone.type == DISK:
            users = [r for r in left if r.type == INSTANCE and f"{gone.name}-id" in _uses(r)]
            calls[-2:-2] = [call for _ in users for call in DETACH]  # after disks.get, before disks.delete
    return calls
