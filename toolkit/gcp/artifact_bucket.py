"""The lab's artifact bucket across `lab down` and `lab up`: it lives in the lab's persistent stack, never imported.

The bucket holds every artifact, off-site backup and the tracker's replica, so `lab down` never deletes it. It is
the one resource of the persistent stack (`infra/persistent/`, project `lab-persistent`, one stack per lab stack and
of the same name), which a plain `lab down` does not touch: the next `lab up` finds it in that stack's state as it
left it, and its `up` changes nothing or updates in place. Nothing is imported, so nothing can fail the way an
import of a retained bucket did ("inputs to import do not match the existing resource": pulumi-gcp reads on import
labels it would not plan for the program, see docs/gcp.md, "What outlives `lab down`").

`keep` is `lab up`'s first change, before the lab's stack: the persistent stack's `up`. One case imports: a bucket
an earlier lab kept outside any state (the retain-then-import design this replaces), carrying this stack's labels.
It is taken in with `pulumi import --file` (Engine.adopt), which records the bucket as the provider reads it and
compares nothing (step.go ImportStep.Apply, the `planned` branch); the `up` after it then converges labels and
settings by an ordinary update. A same-named bucket that is not this lab's is an error naming it; bucket names are
global across all of GCS.

`delete_kept` is `lab down --destroy-data`: the persistent stack is destroyed (it keeps the bucket in GCS unless
lab:destroyData) and the bucket deleted with every object version, only when it carries this stack's labels.

google-cloud-storage is imported here only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from toolkit.config import schema
from toolkit.errors import LabError
from toolkit.gcp import pulumi_state

if TYPE_CHECKING:
    from toolkit.gcp.pulumi_engine import Engine

BUCKET_TYPE = "gcp:storage/bucket:Bucket"
COMPONENT_TYPE = "lab:infra:ArtifactBucket"
LOGICAL_NAME = "artifacts"  # the component's and the bucket's name in infra/persistent/__main__.py

Say = Callable[[str], None]


def in_state(state: pulumi_state.State | None, name: str) -> bool:
    """The stack's checkpoint manages a bucket of that name."""
    return any(r.outputs.get("name") == name for r in (state.of_type(BUCKET_TYPE) if state else []))


def persistent_state(settings: schema.Settings) -> pulumi_state.State | None:
    return pulumi_state.read(pulumi_state.backend_url(settings), settings.stack, pulumi_state.PERSISTENT_PROJECT)


def ours(labels: dict[str, str] | None, settings: schema.Settings) -> bool:
    """The bucket carries this stack's labels (the ones the program gives everything it makes)."""
    found = labels or {}
    return all(found.get(key) == value for key, value in settings.labels.items())


def import_file(name: str) -> list[dict[str, Any]]:
    """The import file's resources (pulumi/pulumi pkg/cmd/pulumi/operations/import.go importSpec, parseImportFile,
    the same at v3.150.0 and 1b594989) that put the bucket where infra/persistent/ registers it: under the
    ArtifactBucket component (a placeholder: `component: true` and no id, which parseImportFile requires), both
    named `artifacts` (`logicalName`, which the URN is made of; `name` only tells them apart in the file and is what
    `parent` refers to): urn:...::lab:infra:ArtifactBucket$gcp:storage/bucket:Bucket::artifacts."""
    return [
        {"type": COMPONENT_TYPE, "name": "component", "logicalName": LOGICAL_NAME, "component": True},
        {"type": BUCKET_TYPE, "name": "bucket", "logicalName": LOGICAL_NAME, "id": name, "parent": "component"},
    ]


def keep(settings: schema.Settings, engine: Engine, say: Say) -> dict[str, Any]:
    """`lab up`'s persistent part: the persistent stack's `up`, after taking in a bucket an older lab kept outside
    any state. Returns the stack's outputs (bucket_name, bucket_url)."""
    from toolkit.gcp import pulumi_engine

    name = settings.bucket_name
    backend = pulumi_state.backend_url(settings)
    if name and not in_state(persistent_state(settings), name):
        if pulumi_state.backend_layout(backend) == "legacy":
            raise LabError(
                f"the Pulumi state backend {backend} uses the legacy layout, where stack names are shared by every "
                "project: the lab's persistent stack would share the file of the lab's stack",
                hint=f"upgrade it once with `pulumi state upgrade` (PULUMI_BACKEND_URL={backend}), then `lab up`",
            )
        bucket = _lookup(name, settings.project or "")
        if bucket is not None:
            if not ours(bucket.labels, settings):
                shown = ", ".join(f"{k}={v}" for k, v in sorted((bucket.labels or {}).items())) or "none"
                raise LabError(
                    f"the bucket gs://{name} already exists and is not this lab's (its labels: {shown})",
                    hint="bucket names are global across GCS: set lab:bucketName to a name of your own in the "
                    "stack file",
                )
            say(f"taking the bucket gs://{name} (kept by an earlier `lab down`) into the lab's persistent stack")
            engine.adopt(import_file(name), say)
    return engine.up(pulumi_engine.RunChoices(), say)


def delete_kept(settings: schema.Settings, persistent: Callable[[], Engine], say: Say) -> str | None:
    """`lab down --destroy-data`: the persistent stack destroyed (by the engine `persistent` gives, asked for only
    when that stack holds something) and the bucket deleted with every object version, if it is there and this
    lab's. Returns its name when deleted."""
    from toolkit.tracker import gcs

    name = settings.bucket_name
    if not name:
        return None
    bucket = _lookup(name, settings.project or "")
    if bucket is not None and not ours(bucket.labels, settings):
        raise LabError(
            f"gs://{name} is not this lab's bucket (its labels do not name stack {settings.stack}), so it was kept",
            hint="delete it yourself if it is yours: gcloud storage rm --recursive gs://" + name,
        )
    state = persistent_state(settings)
    if state is not None and state.cloud_resources:
        persistent().destroy(say)  # the bucket is retain-on-delete unless lab:destroyData: it stays in GCS for now
    if bucket is None:
        say(f"gs://{name} does not exist: no data to delete")
        return None
    count = gcs.delete_bucket(name)
    say(f"deleted the bucket gs://{name} and its {count} object versions (--destroy-data)")
    return name


def _lookup(name: str, project: str) -> Any:
    """The bucket's metadata, None when it does not exist. 403: it exists and is someone else's."""
    from google.api_core import exceptions

    from toolkit.gcp import state_bucket

    client = state_bucket.client_for(project)
    try:
        return client.lookup_bucket(name, **state_bucket.call_options())
    except exceptions.Forbidden as exc:
        raise LabError(
            f"the bucket gs://{name} exists and these credentials may not read it (403: {state_bucket.reason(exc)})",
            hint="it is another project's, or you lack storage.buckets.get on it: set lab:bucketName to another "
            "name in the stack file",
        ) from None
    except state_bucket.failures() as exc:
        raise state_bucket.unexpected(name, "look up", exc) from None
