"""The VMs' identity: one service account whose only grant is object admin on the lab's bucket."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

BUCKET_ROLE = "roles/storage.objectAdmin"


@dataclass(frozen=True)
class LabIdentityArgs:
    account_id: str
    bucket: pulumi.Input[str]


class LabIdentity(pulumi.ComponentResource):
    """A dedicated service account for every lab VM. No project-wide roles and no key files:
    the VMs get tokens from the metadata server, and the bucket IAM member is its only permission."""

    def __init__(self, name: str, args: LabIdentityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("lab:infra:Identity", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.account = gcp.serviceaccount.Account(
            name,
            account_id=args.account_id,
            display_name="lab VMs (object admin on the lab bucket only)",
            opts=child,
        )
        self.email = self.account.email
        self.bucket_grant = gcp.storage.BucketIAMMember(
            f"{name}-bucket-object-admin",
            bucket=args.bucket,
            role=BUCKET_ROLE,
            member=self.account.email.apply(lambda email: f"serviceAccount:{email}"),
            opts=child,
        )
        self.register_outputs({"email": self.email})
