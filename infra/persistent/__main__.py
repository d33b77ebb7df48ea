"""The lab's persistent part: the artifact bucket, in a stack of its own that `lab down` never destroys.

The bucket was once retained by the lab's stack at `lab down` and imported back at the next `lab up`. Pulumi refuses an
import whose inputs differ from what the provider reads ("inputs to import do not match the existing resource"), and
pulumi-gcp's reading of labels on import differs from what it plans for a program (its attribution label since v8,
pulumi/pulumi-gcp#3044; `labels` no longer read on import since v9). Here the bucket stays in the state, so no `up`
ever imports it (docs/gcp.md, "What outlives `lab down`").
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # infra/: the components and the config reader

import pulumi
import stack_config
from bucket import ArtifactBucket, ArtifactBucketArgs

settings = stack_config.load()
bucket = ArtifactBucket(
    "artifacts",
    ArtifactBucketArgs(
        name=settings.bucket_name,
        location=settings.bucket_location,
        labels=settings.labels,
        destroy_data=settings.destroy_data,
    ),
)
pulumi.export("bucket_name", bucket.name)
pulumi.export("bucket_url", bucket.url)
