"""The artifact bucket: private, versioned, and in the lab's persistent stack (infra/persistent/), which `lab down`
never destroys."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from toolkit.config.replica_bucket import BUCKET_PREFIX as REPLICA_PREFIX
from toolkit.config.replica_bucket import NONCURRENT_DAYS as REPLICA_NONCURRENT_DAYS
from toolkit.data.bucket import PART_SUFFIX
from toolkit.data.store import FOLDER as DATASETS

NONCURRENT_VERSION_DAYS = 30
# A dataset upload's parts (toolkit/data/bucket.py: composed into the blob, then deleted; only they end in
# PART_SUFFIX under the datasets' folder, whatever MLflow's artifacts are called): their noncurrent versions go after
# a day, not NONCURRENT_VERSION_DAYS; parts a killed upload left live go after PART_LEFTOVER_DAYS.
PART_NONCURRENT_DAYS = 1
PART_LEFTOVER_DAYS = 2
# Soft delete: a deleted or overwritten object stays restorable this long, whoever deleted it
# (https://cloud.google.com/storage/docs/soft-delete). GCP's default for new buckets; stated so it stays.
SOFT_DELETE_S = 7 * 24 * 3600


# -- the replica's deleted files (breakage 7 of issue 24) --------------------------------------------------------
def replica_rule() -> gcp.storage.BucketLifecycleRuleArgs:
    """Litestream deletes LTX files all the time (compaction, retention); under `replica/` their noncurrent versions
    go after REPLICA_NONCURRENT_DAYS, not NONCURRENT_VERSION_DAYS (a rule that deletes sooner wins: GCS applies
    the Delete of any rule whose conditions hold, https://cloud.google.com/storage/docs/lifecycle). The replica's
    own retention (lab:backupDays) is in its live files; a noncurrent LTX file restores nothing."""
    return gcp.storage.BucketLifecycleRuleArgs(
        action=gcp.storage.BucketLifecycleRuleActionArgs(type="Delete"),
        condition=gcp.storage.BucketLifecycleRuleConditionArgs(
            days_since_noncurrent_time=REPLICA_NONCURRENT_DAYS, with_state="ARCHIVED", matches_prefixes=[REPLICA_PREFIX]
        ),
    )


# -- end of the replica's rule ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArtifactBucketArgs:
    name: str
    location: str
    labels: dict[str, str]
    destroy_data: bool  # lab:destroyData: only then may a destroy delete the bucket and what it holds


class ArtifactBucket(pulumi.ComponentResource):
    """MLflow artifacts and tracker backups. Uniform access, public access prevention enforced,
    versioning on, old versions expired after a while. It lives in the persistent stack, which only
    `lab down --destroy-data` destroys; even then a destroy leaves it in GCS unless destroy_data."""

    def __init__(self, name: str, args: ArtifactBucketArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("lab:infra:ArtifactBucket", name, None, opts)
        self.bucket = gcp.storage.Bucket(
            name,
            name=args.name,
            location=args.location,
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            versioning=gcp.storage.BucketVersioningArgs(enabled=True),
            soft_delete_policy=gcp.storage.BucketSoftDeletePolicyArgs(retention_duration_seconds=SOFT_DELETE_S),
            lifecycle_rules=[
                gcp.storage.BucketLifecycleRuleArgs(
                    action=gcp.storage.BucketLifecycleRuleActionArgs(type="Delete"),
                    condition=gcp.storage.BucketLifecycleRuleConditionArgs(
                        days_since_noncurrent_time=NONCURRENT_VERSION_DAYS, with_state="ARCHIVED"
                    ),
                ),
                gcp.storage.BucketLifecycleRuleArgs(
                    action=gcp.storage.BucketLifecycleRuleActionArgs(type="Delete"),
                    condition=gcp.storage.BucketLifecycleRuleConditionArgs(
                        days_since_noncurrent_time=PART_NONCURRENT_DAYS,
                        with_state="ARCHIVED",
                        matches_prefixes=[f"{DATASETS}/"],
                        matches_suffixes=[PART_SUFFIX],
                    ),
                ),
                gcp.storage.BucketLifecycleRuleArgs(
                    action=gcp.storage.BucketLifecycleRuleActionArgs(type="Delete"),
                    condition=gcp.storage.BucketLifecycleRuleConditionArgs(
                        age=PART_LEFTOVER_DAYS, matches_prefixes=[f"{DATASETS}/"], matches_suffixes=[PART_SUFFIX]
                    ),
                ),
                replica_rule(),
            ],
            labels={**args.labels, "role": "artifacts"},
            force_destroy=args.destroy_data,
            # Never imported: the persistent stack keeps it in its state across `lab down` (see
            # toolkit/gcp/artifact_bucket.py for why an import cannot be trusted to match).
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=not args.destroy_data),
        )
        self.name = self.bucket.name
        self.url = self.bucket.url
        self.register_outputs({"name": self.name, "url": self.url})
