"""The VMs' identities: one service account for the tracker, one for the workers, each with only what it needs.

The tracker writes the bucket (MLflow's proxied artifacts, the tracker's backups). Workers never need to write
it: trials log through MLflow, which proxies artifacts through the tracker. So notebook code on a worker (a
malicious package, an unpickled checkpoint) can neither read the backups nor delete or overwrite them; it may
read the datasets the lab keeps under `datasets/` and nothing else. No key files: the VMs get tokens from the
metadata server.

The tracker also starts workers that GCP stopped (spot preemption) or that powered themselves off while a sweep
still needs them (toolkit.gcp.revive). For that it holds one custom role (read, start and stop instances; read zone
operations, where a start's outcome such as a stockout is told) bound on the project under an IAM condition that
names the lab's worker instances one by one, following "Configure resource-based access"
(https://cloud.google.com/iam/docs/configuring-resource-based-access): resource names of VMs are
projects/P/zones/Z/instances/NAME, and the `resource.type != "compute.googleapis.com/Instance"` branch is the
page's own way to let the role's other permission (zoneOperations.get) apply to the resources that are no
instance. Exact names, not a name prefix: the prefix of stack "dev" (lab-dev-worker-) is also the start of
another stack's worker names (stack "dev-worker-x"). The workers' account gets none of it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

TRACKER_BUCKET_ROLE = "roles/storage.objectAdmin"
# What the tracker may do to worker VMs (toolkit.gcp.api.get_instance, start_instance, stop_instance and
# get_operation; each method's reference page names the permission it needs).
WORKER_CONTROL_PERMISSIONS = (
    "compute.instances.get",
    "compute.instances.start",
    "compute.instances.stop",
    "compute.zoneOperations.get",
)
INSTANCE_TYPE = "compute.googleapis.com/Instance"
WORKER_BUCKET_ROLE = "roles/storage.objectViewer"
DATASETS_PREFIX = "datasets/"
BUCKET_TYPE = "storage.googleapis.com/Bucket"
LIST_PREFIX_ATTRIBUTE = "storage.googleapis.com/objectListPrefix"


def worker_read_condition(bucket: str) -> str:
    """The workers' objectViewer holds for the objects under `datasets/` and for lists of that prefix, nothing else.

    IAM Conditions name a bucket's objects projects/_/buckets/BUCKET/objects/NAME and the bucket itself
    projects/_/buckets/BUCKET, of type storage.googleapis.com/Bucket
    (https://cloud.google.com/iam/docs/conditions-resource-attributes#resource-name; conditions need uniform
    bucket-level access, which the bucket has). objects.get is checked against the object, but objects.list
    against the bucket, whose name no object prefix matches: a list is told apart by its `prefix`, the API
    attribute storage.googleapis.com/objectListPrefix
    (https://cloud.google.com/iam/docs/conditions-attribute-reference#api-attributes; "" for every request that is
    no list, and for a list of the whole bucket). Every fetch lists `datasets/NAME/versions/` first
    (toolkit.data.fetch.BucketSource), so without the second branch a worker could read no dataset."""
    return (
        f'resource.name.startsWith("projects/_/buckets/{bucket}/objects/{DATASETS_PREFIX}") || '
        f'(resource.type == "{BUCKET_TYPE}" && '
        f'api.getAttribute("{LIST_PREFIX_ATTRIBUTE}", "").startsWith("{DATASETS_PREFIX}"))'
    )


def worker_control_condition(project: str, zone: str, instances: list[str]) -> str:
    """True for the named worker VMs and for resources that are no VM (the zone operations); false for every
    other VM of the project, the tracker's included."""
    named = " || ".join(f'resource.name == "projects/{project}/zones/{zone}/instances/{name}"' for name in instances)
    return f'resource.type != "{INSTANCE_TYPE}" || {named}'


def worker_control_role_id(prefix: str, unique_id: str) -> str:
    """The custom role's id ([a-zA-Z0-9_.], at most 64): the stack's prefix and the tracker account's unique id.
    A deleted custom role's id cannot be used again for up to 37 days (pulumi-gcp IAMCustomRole's warning;
    https://cloud.google.com/iam/docs/reference/rest/v1/projects.roles/delete), and `lab down` deletes the role
    with the account, so each account (a new one after each down) gets a role of its own."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", prefix)[:30]
    return f"{base}_workers_{unique_id}"[:64]


@dataclass(frozen=True)
class LabIdentityArgs:
    tracker_account_id: str
    worker_account_id: str
    bucket: pulumi.Input[str]
    project: str = ""
    prefix: str = "lab"
    worker_zone: str = ""
    worker_instances: tuple[str, ...] = ()  # the names of the worker VMs the tracker may start and stop


class LabIdentity(pulumi.ComponentResource):
    """Two dedicated service accounts. The tracker's grants are object admin on the lab's bucket and the worker
    control role on the worker VMs (an IAM condition); the workers' only grant is object viewer on the bucket's
    `datasets/` objects (an IAM condition)."""

    def __init__(self, name: str, args: LabIdentityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("lab:infra:Identity", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.tracker_account = gcp.serviceaccount.Account(
            f"{name}-tracker",
            account_id=args.tracker_account_id,
            display_name="lab tracker (object admin on the lab bucket only)",
            opts=child,
        )
        self.worker_account = gcp.serviceaccount.Account(
            f"{name}-worker",
            account_id=args.worker_account_id,
            display_name="lab workers (read the lab bucket's datasets only)",
            opts=child,
        )
        self.tracker_email = self.tracker_account.email
        self.worker_email = self.worker_account.email
        self.tracker_grant = gcp.storage.BucketIAMMember(
            f"{name}-tracker-bucket-object-admin",
            bucket=args.bucket,
            role=TRACKER_BUCKET_ROLE,
            member=self.tracker_email.apply(lambda email: f"serviceAccount:{email}"),
            opts=child,
        )
        self.worker_grant = gcp.storage.BucketIAMMember(
            f"{name}-worker-datasets-viewer",
            bucket=args.bucket,
            role=WORKER_BUCKET_ROLE,
            member=self.worker_email.apply(lambda email: f"serviceAccount:{email}"),
            condition=gcp.storage.BucketIAMMemberConditionArgs(
                title="lab datasets only",
                description="workers read the lab's datasets and nothing else of the bucket",
                expression=pulumi.Output.from_input(args.bucket).apply(worker_read_condition),
            ),
            opts=child,
        )
        if args.worker_instances:
            self._worker_control(name, args, child)
        self.register_outputs({"tracker_email": self.tracker_email, "worker_email": self.worker_email})

    def _worker_control(self, name: str, args: LabIdentityArgs, child: pulumi.ResourceOptions) -> None:
        """The tracker's custom role on the worker VMs and its conditioned binding on the project."""
        self.worker_control_role = gcp.projects.IAMCustomRole(
            f"{name}-worker-control",
            project=args.project,
            role_id=self.tracker_account.unique_id.apply(lambda uid: worker_control_role_id(args.prefix, uid)),
            title=f"{args.prefix} workers: read, start, stop",
            description="lets the lab's tracker start its workers again after a preemption",
            permissions=list(WORKER_CONTROL_PERMISSIONS),
            opts=child,
        )
        self.worker_control_grant = gcp.projects.IAMMember(
            f"{name}-tracker-worker-control",
            project=args.project,
            role=pulumi.Output.concat("projects/", args.project, "/roles/", self.worker_control_role.role_id),
            member=self.tracker_email.apply(lambda email: f"serviceAccount:{email}"),
            condition=gcp.projects.IAMMemberConditionArgs(
                title="lab workers only",
                description="the tracker may read, start and stop the lab's worker VMs and no other VM",
                expression=worker_control_condition(args.project, args.worker_zone, list(args.worker_instances)),
            ),
            opts=child,
        )
