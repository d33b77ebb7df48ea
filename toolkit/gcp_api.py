"""The few Compute Engine API calls the lab makes itself (the rest is Pulumi's): what is still labelled
with a stack after `lab down`. google-auth is imported here only; credentials are the application
default ones, as for Pulumi's GCP provider.
"""

from __future__ import annotations

import os
from typing import Any

from toolkit.errors import LabError

COMPUTE_API = "https://compute.googleapis.com/compute/v1"
KINDS = ("instances", "disks")


def _session() -> Any:
    import google.auth
    from google.auth import exceptions as auth_exceptions
    from google.auth.transport.requests import AuthorizedSession

    try:
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/compute.readonly"])
    except auth_exceptions.DefaultCredentialsError as exc:
        raise LabError(
            f"no Google credentials ({str(exc).splitlines()[0]})",
            hint="gcloud auth application-default login",
        ) from None
    return AuthorizedSession(credentials)


def labelled_in(page: dict[str, Any], kind: str) -> list[str]:
    """'<kind> <name> in <zone>' for each item of one page of an aggregatedList response."""
    found = []
    for scope, listing in sorted((page.get("items") or {}).items()):
        for item in listing.get(kind) or []:
            found.append(f"{kind[:-1]} {item.get('name')} in {scope.split('/', 1)[-1]}")
    return found


def labelled_resources(project: str, stack_label: str) -> list[str]:
    """Instances and disks of the project labelled lab=<stack_label>."""
    if not project:
        raise LabError("the stack has no gcp:project to look in")
    session = _session()
    base = os.environ.get("LAB_COMPUTE_API", COMPUTE_API).rstrip("/")
    found: list[str] = []
    for kind in KINDS:
        params: dict[str, str] = {"filter": f"labels.lab={stack_label}", "returnPartialSuccess": "true"}
        while True:
            try:
                response = session.get(f"{base}/projects/{project}/aggregated/{kind}", params=params, timeout=60)
            except Exception as exc:  # transport errors come in several types
                raise LabError(f"the Compute API did not answer: {type(exc).__name__}") from None
            if response.status_code != 200:
                message = response.json().get("error", {}).get("message", response.text[:200])
                raise LabError(f"the Compute API refused to list {kind} ({response.status_code}): {message}")
            page = response.json()
            found += labelled_in(page, kind)
            if not page.get("nextPageToken"):
                break
            params["pageToken"] = page["nextPageToken"]
    return found
