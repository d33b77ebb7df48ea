"""The bucket that holds a gcp stack's Pulumi state (lab:stateBackend: gs://BUCKET), made safe to keep state in.

Pulumi's state is the only record of what a lab created; losing or leaking it is costly. So the bucket has
versioning on (an overwritten checkpoint can be recovered), public access prevention enforced and uniform
bucket-level access (no object ACLs can open it), and the label managed-by=lab. `ensure_state_bucket`
creates it with those settings, or checks an existing one: a bucket lab made is put right, anyone
else's is only reported, since enforcing those settings could break what else it serves.

google-cloud-storage is imported here only, when a gs:// backend is used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from toolkit.errors import LabError

LABELS = {"managed-by": "lab"}
REQUEST_TIMEOUT_S = 30.0
RETRY_DEADLINE_S = 60.0
FIX_COMMAND = (
    "gcloud storage buckets update gs://{name} --versioning --public-access-prevention --uniform-bucket-level-access"
)


@dataclass(frozen=True)
class Shortfall:
    """One setting of the bucket that is not what state needs."""

    setting: str
    found: str

    def __str__(self) -> str:
        return f"{self.setting} is {self.found}"


def ensure_state_bucket(name: str, project: str, location: str) -> bool:
    """Make sure gs://`name` exists with the settings Pulumi state needs; True when it was created here.

    A missing bucket is created in `project` at `location`. An existing one is checked: a bucket labelled
    managed-by=lab has any setting that drifted put right; another bucket with a wrong setting is a
    LabError naming each one and the command that fixes them. 403 and 409 become one-line LabErrors that
    say whose the name is and what to do.
    """
    from google.api_core import exceptions

    client = client_for(project)
    try:
        bucket = client.lookup_bucket(name, **call_options())
    except exceptions.Forbidden as exc:
        raise LabError(
            f"gs://{name} exists but these credentials may not read it (403: {reason(exc)})",
            hint="the name belongs to another project or you lack storage.buckets.get on it; pick another name "
            "with --state-backend gs://NAME, or get roles/storage.admin on that bucket",
        ) from None
    except failures() as exc:
        raise unexpected(name, "look up", exc) from None
    created = False
    if bucket is None:
        bucket, created = _create(client, name, project, location)
    _converge(bucket, created=created)
    return created


def shortfalls(bucket: Any) -> list[Shortfall]:
    """What differs, in a bucket's metadata as read back, from what Pulumi state needs."""
    found: list[Shortfall] = []
    if not bucket.versioning_enabled:
        found.append(Shortfall("versioning", "off"))
    iam = bucket.iam_configuration
    prevention = iam.public_access_prevention or "unspecified"
    if prevention != "enforced":
        found.append(Shortfall("public access prevention", f"{prevention}, not enforced"))
    if not iam.uniform_bucket_level_access_enabled:
        found.append(Shortfall("uniform bucket-level access", "off"))
    labels = bucket.labels or {}
    for key, value in LABELS.items():
        if labels.get(key) != value:
            found.append(Shortfall(f"label {key}", repr(labels.get(key)) if key in labels else "missing"))
    return found


def client_for(project: str) -> Any:
    try:
        from google.auth import exceptions as auth_exceptions
        from google.cloud import storage
    except ImportError:
        from toolkit.config.paths import install_command

        raise LabError(
            "a gs:// state backend needs google-cloud-storage, which is not installed",
            hint=install_command("gcp"),
        ) from None
    try:
        return storage.Client(project=project)
    except auth_exceptions.DefaultCredentialsError:
        raise LabError(
            "no Google Cloud credentials to reach the state bucket", hint="gcloud auth application-default login"
        ) from None


def call_options() -> dict[str, Any]:
    """Bounded waits: against an unreachable GCS the client would otherwise retry for minutes."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return {"timeout": REQUEST_TIMEOUT_S, "retry": DEFAULT_RETRY.with_timeout(RETRY_DEADLINE_S)}


def _create(client: Any, name: str, project: str, location: str) -> tuple[Any, bool]:
    from google.api_core import exceptions

    bucket = client.bucket(name)
    bucket.versioning_enabled = True
    bucket.iam_configuration.uniform_bucket_level_access_enabled = True
    bucket.iam_configuration.public_access_prevention = "enforced"
    bucket.labels = dict(LABELS)
    try:
        return client.create_bucket(bucket, project=project, location=location, **call_options()), True
    except exceptions.Conflict as exc:
        if "already own" in reason(exc):
            # Made a moment ago by this account (another `lab init`, or a retried request): check it as it is.
            found = client.lookup_bucket(name, **call_options())
            if found is not None:
                return found, False
        raise LabError(
            f"the bucket name {name} is taken (409: {reason(exc)})",
            hint="bucket names are global across all of GCS; pick another with --state-backend gs://NAME, "
            f"such as gs://{project}-lab-state",
        ) from None
    except exceptions.Forbidden as exc:
        raise LabError(
            f"permission denied creating gs://{name} in project {project} (403: {reason(exc)})",
            hint=f"you need storage.buckets.create there (roles/storage.admin on {project}), "
            "or create the bucket yourself and run lab init again",
        ) from None
    except failures() as exc:
        raise unexpected(name, "create", exc) from None


def _converge(bucket: Any, *, created: bool) -> None:
    """Put a lab-made bucket's settings right; report anyone else's."""
    from google.api_core import exceptions

    wrong = shortfalls(bucket)
    ours = created or all((bucket.labels or {}).get(k) == v for k, v in LABELS.items())
    if not ours:
        # Someone else's bucket: its labels are theirs; only the settings that protect state matter.
        wrong = [s for s in wrong if not s.setting.startswith("label ")]
    if not wrong:
        return
    listing = ", ".join(map(str, wrong))
    if not ours:
        raise LabError(
            f"gs://{bucket.name} is not fit to hold Pulumi state: {listing}; lab changes only buckets it made",
            hint=f"fix it with `{FIX_COMMAND.format(name=bucket.name)}`, or pick another bucket",
        )
    bucket.versioning_enabled = True
    bucket.iam_configuration.uniform_bucket_level_access_enabled = True
    bucket.iam_configuration.public_access_prevention = "enforced"
    bucket.labels = {**(bucket.labels or {}), **LABELS}
    try:
        bucket.patch(**call_options())
        bucket.reload(**call_options())
    except exceptions.Forbidden as exc:
        raise LabError(
            f"gs://{bucket.name} needs fixing ({listing}) but these credentials may not change it (403: {reason(exc)})",
            hint=f"run `{FIX_COMMAND.format(name=bucket.name)}` with an account that may",
        ) from None
    except failures() as exc:
        raise unexpected(bucket.name, "update", exc) from None
    still = shortfalls(bucket)
    if still:
        raise LabError(
            f"gs://{bucket.name} kept settings unfit for Pulumi state: {', '.join(map(str, still))}",
            hint=f"run `{FIX_COMMAND.format(name=bucket.name)}`",
        )


def failures() -> tuple[type[Exception], ...]:
    """Every other way a call to GCS fails: an API error, retries given up, no connection, no token."""
    import requests
    from google.api_core import exceptions
    from google.auth import exceptions as auth_exceptions

    return (exceptions.GoogleAPIError, requests.RequestException, auth_exceptions.GoogleAuthError)


def reason(exc: Any) -> str:
    """GCS's own words, on one line, without the request line the client puts first."""
    text = " ".join(str(getattr(exc, "message", "") or exc).split())
    return re.sub(r"^(GET|POST|PATCH|PUT|DELETE) \S+: ", "", text)


def unexpected(name: str, action: str, exc: Any) -> LabError:
    code = getattr(exc, "code", None)
    said = f"{code}: {reason(exc)}" if code else f"{type(exc).__name__}: {reason(exc)}"
    return LabError(f"could not {action} gs://{name} ({said})", hint="check your network and credentials")
