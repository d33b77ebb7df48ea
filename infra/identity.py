"""The VMs' identities: one service account for the tracker, one for the workers, each with only what it needs.

The tracker writes the bucket (MLflow's proxied artifacts, the tracker's backups). Workers never need to write
it: trials log through MLflow, which proxies artifacts through the tracker. So notebook code on a worker (a
malicious package, an unpickled checkpoint) can neither read the backups nor delete or overwrite them; it may
read the datasets the lab keeps under `datasets/` and nothing else. No project-wide roles, no key files: the
VMs get tokens from the metadata server.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

TRACKER_BUCKET_ROLE = "roles/storage.objectAdmin"
WORKER_BUCKET_ROLE = "roles/storage.objectViewer"
DATASETS_PREFIX = "datasets/"


def worker_read_condition(bucket: str) -> str:
    """IAM Conditions on a bucket name objects as projects/_/buckets/BUCKET/objects/NAME
    (https://cloud.google.com/iam/docs/conditions-resource-attributes#resource-name; needs uniform
    bucket-level access, which the bucket has)."""
    return f'resource.name.startsWith("projects/_/buckets/{bucket}/objects/{DATASETS_PREFIX}")'


@dataclass(frozen=True)
class LabIdentityArgs:
    tracker_account_id: str
    worker_account_id: str
    bucket: pulumi.Input[str]


class LabIdentity(pulumi.ComponentResource):
    """Two dedicated service accounts. The tracker's only grant is object admin on the lab's bucket; the
    workers' only grant is object viewer on the bucket's `datasets/` objects (an IAM condition)."""

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
        self.register_outputs({"tracker_email": self.tracker_email, "worker_email": self.worker_email})
