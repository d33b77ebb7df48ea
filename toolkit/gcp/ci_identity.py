"""The least a scheduled `lab down` needs from GCP, as the identity a CI runner acts as (a service account through
Workload Identity Federation): what docs/gcp.md and the workflow `lab schedule down --print` shows both say.

What a no-SSH `lab down` on gcp does, and the permission each step needs (each method's reference page):
- reads and writes the Pulumi state in the state bucket: the diy backend gets, lists, writes (overwriting the
  checkpoint) and deletes objects under `.pulumi/` (its lock files): `roles/storage.objectUser` on that bucket;
- stops the tracker (instances.stop) and waits for it (zoneOperations.wait: compute.zoneOperations.get, as
  globalOperations.wait's page names compute.globalOperations.get);
- `pulumi destroy` of the lab's stack (the bucket is the persistent stack's), without --refresh, so only each
  resource's Delete runs, as pulumi-gcp's (hashicorp/terraform-provider-google, v5.0.0 to 2026-08) calls GCP:
  the VMs (instances.delete; the boot disk goes with the VM; resourceComputeInstanceDelete detaches nothing), the
  tracker's data disk (resourceComputeDiskDelete: disks.get, then disks.delete; it detaches the disk from the
  VMs in its `users` first, instances.get + instances.detachDisk, but the engine deletes the tracker, which
  depends on the disk, before it, so there are none), the address, the firewall rules, the subnetwork and the
  network (a DELETE each), every one followed by its zone/region/global operation (operations.get); the two
  service accounts (iam.serviceAccounts.delete), the custom role (iam.roles.delete), the tracker's conditioned
  project binding (projects.getIamPolicy/setIamPolicy) and the bucket's two bindings (the bucket's
  getIamPolicy/setIamPolicy: a read-modify-write of the bucket's policy). tests/gcp/teardown_calls.py cites each
  Delete function and each method's reference page;
- waits for the tracker's final backup in the artifact bucket and downloads it (toolkit.tracker.gcs: objects.list
  with prefix `backups/<stack>/`, objects.get): `roles/storage.objectViewer` on that bucket under an IAM condition
  that names the stack's backups only;
- reads the VMs as they are and asks for anything still labelled with the stack (instances and disks
  aggregatedList: compute.instances.list, compute.disks.list). Not granted: the VMs' SSH host keys (guest
  attributes, compute.instances.getGuestAttributes), which a runner that cannot SSH has no use for; lab says it
  could not read them and goes on.

No predefined role is this small (compute.instanceAdmin.v1 + compute.networkAdmin + compute.securityAdmin +
iam.serviceAccountAdmin + iam.roleAdmin + resourcemanager.projectIamAdmin would grant creating all of it too),
so the project part is one custom role of exactly PROJECT_PERMISSIONS. Binding a project's or a bucket's policy
(setIamPolicy) is part of destroying what the program bound; it is what the runner's identity can misuse most,
which is why the runner should act only from the repository's scheduled workflow (the WIF provider's attribute
condition on the repository).
"""

from __future__ import annotations

from dataclasses import dataclass

STATE_BUCKET_ROLE = "roles/storage.objectUser"
BACKUPS_READER_ROLE = "roles/storage.objectViewer"
TEARDOWN_ROLE_ID = "labTeardown"
BUCKET_POLICY_ROLE_ID = "labBucketPolicy"
PROJECT_PERMISSIONS = (
    "compute.instances.list",
    "compute.instances.stop",
    "compute.instances.delete",
    "compute.disks.get",
    "compute.disks.delete",
    "compute.disks.list",
    "compute.addresses.delete",
    "compute.firewalls.delete",
    "compute.subnetworks.delete",
    "compute.networks.delete",
    "compute.zoneOperations.get",
    "compute.regionOperations.get",
    "compute.globalOperations.get",
    "iam.serviceAccounts.delete",
    "iam.roles.delete",
    "resourcemanager.projects.getIamPolicy",
    "resourcemanager.projects.setIamPolicy",
)
BUCKET_POLICY_PERMISSIONS = ("storage.buckets.getIamPolicy", "storage.buckets.setIamPolicy")


def backups_condition(bucket: str, stack: str) -> str:
    """The stack's backups in the artifact bucket and nothing else: the objects under backups/<stack>/ (checked
    against the object) and lists of that prefix (checked against the bucket, with IAM's objectListPrefix)."""
    prefix = f"backups/{stack}/"
    return (
        f'resource.name.startsWith("projects/_/buckets/{bucket}/objects/{prefix}") || '
        f'(resource.type == "storage.googleapis.com/Bucket" && '
        f'api.getAttribute("storage.googleapis.com/objectListPrefix", "").startsWith("{prefix}"))'
    )


@dataclass(frozen=True)
class Grant:
    """One binding: `role` for the runner's service account on `where` (a project or a gs:// bucket)."""

    where: str
    role: str
    condition: str | None = None


def grants(project: str, state_bucket: str, artifact_bucket: str, stack: str) -> list[Grant]:
    """Every binding the runner's identity needs, least first: the state bucket, the artifact bucket, the project."""
    custom = f"projects/{project}/roles/"
    return [
        Grant(f"gs://{state_bucket}", STATE_BUCKET_ROLE),
        Grant(f"gs://{artifact_bucket}", BACKUPS_READER_ROLE, backups_condition(artifact_bucket, stack)),
        Grant(f"gs://{artifact_bucket}", custom + BUCKET_POLICY_ROLE_ID),
        Grant(project, custom + TEARDOWN_ROLE_ID),
    ]


def gcloud_commands(project: str, state_bucket: str, artifact_bucket: str, stack: str, account: str) -> list[str]:
    """The gcloud commands that make the two custom roles and bind every grant to `account` (an email)."""
    member = f"serviceAccount:{account}"
    lines = [
        f"gcloud iam roles create {TEARDOWN_ROLE_ID} --project {project} --title 'lab teardown' "
        f"--permissions {','.join(PROJECT_PERMISSIONS)}",
        f"gcloud iam roles create {BUCKET_POLICY_ROLE_ID} --project {project} --title 'lab bucket policy' "
        f"--permissions {','.join(BUCKET_POLICY_PERMISSIONS)}",
    ]
    for grant in grants(project, state_bucket, artifact_bucket, stack):
        if grant.where.startswith("gs://"):
            command = (
                f"gcloud storage buckets add-iam-policy-binding {grant.where} --member {member} --role {grant.role}"
            )
        else:
            command = f"gcloud projects add-iam-policy-binding {grant.where} --member {member} --role {grant.role}"
        if grant.condition:
            # `^;^` makes `;` the separator of the flag's pairs: the expression holds commas (gcloud topic escaping)
            command += f" --condition='^;^title=lab {stack} backups;expression={grant.condition}'"
        lines.append(command)
    return lines
