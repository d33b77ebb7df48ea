"""The lab's artifact bucket across `lab down` and `lab up`: kept, then taken back.

The bucket holds every artifact and off-site backup, so `lab down` never deletes it: the program marks it
retain-on-delete, and a destroy drops it from the Pulumi state while it stays in GCS. The next `lab up` must
then take that same bucket back rather than try to create it again (GCS would answer 409). Before each
`up`, `adoption` looks: the bucket is in the state (nothing to do), absent from GCS (the program creates it),
or in GCS carrying this stack's labels (the program imports it: `LAB_ADOPT_BUCKET`). A same-named bucket that
is not this lab's is an error naming it; bucket names are global across all of GCS.

`delete_kept` is `lab down --destroy-data` for a lab that is already down: the bucket is no longer in the
state, so it is deleted here, and only when it carries this stack's labels.

google-cloud-storage is imported here only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from toolkit.config import schema
from toolkit.errors import LabError
from toolkit.gcp import pulumi_state

BUCKET_TYPE = "gcp:storage/bucket:Bucket"

Say = Callable[[str], None]


def in_state(state: pulumi_state.State | None, name: str) -> bool:
    """The stack's checkpoint manages a bucket of that name."""
    return any(r.outputs.get("name") == name for r in (state.of_type(BUCKET_TYPE) if state else []))


def ours(labels: dict[str, str] | None, settings: schema.Settings) -> bool:
    """The bucket carries this stack's labels (the ones the program gives everything it makes)."""
    found = labels or {}
    return all(found.get(key) == value for key, value in settings.labels.items())


def adoption(settings: schema.Settings, state: pulumi_state.State | None) -> str | None:
    """The bucket this `lab up` must import (kept by an earlier `lab down`), or None when the program creates
    it or already manages it. A same-named bucket that is not this lab's is a LabError naming it."""
    name = settings.bucket_name
    if not name or in_state(state, name):
        return None
    bucket = _lookup(name, settings.project or "")
    if bucket is None:
        return None
    if ours(bucket.labels, settings):
        return name
    shown = ", ".join(f"{k}={v}" for k, v in sorted((bucket.labels or {}).items())) or "none"
    raise LabError(
        f"the bucket gs://{name} already exists and is not this lab's (its labels: {shown})",
        hint="bucket names are global across GCS: set lab:bucketName to a name of your own in the stack file",
    )


def delete_kept(settings: schema.Settings, say: Say) -> str | None:
    """`lab down --destroy-data` when the lab is already down: delete the kept bucket with every object version,
    if it is there and this lab's. Returns its name when deleted."""
    from toolkit.tracker import gcs

    name = settings.bucket_name
    if not name:
        return None
    bucket = _lookup(name, settings.project or "")
    if bucket is None:
        say(f"gs://{name} does not exist: no data to delete")
        return None
    if not ours(bucket.labels, settings):
        raise LabError(
            f"gs://{name} is not this lab's bucket (its labels do not name stack {settings.stack}), so it was kept",
            hint="delete it yourself if it is yours: gcloud storage rm --recursive gs://" + name,
        )
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
