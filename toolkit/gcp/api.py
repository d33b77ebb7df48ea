"""The few Google Cloud REST calls the lab makes itself (the rest is Pulumi's): the lab's VMs as they are now
(status, addresses, SSH host keys), starting and stopping them, what is still labelled with a stack after
`lab down`, and what `lab doctor` checks (enabled APIs, organization policies).

Why a small REST helper and not google-cloud-compute: that library covers only Compute Engine (serviceusage
and Resource Manager would need two more), importing `google.cloud.compute_v1` takes 1.8-2.5 s and 150 MB
(measured with 1.56), and its operation errors hide the per-error codes that say "stockout". google-auth's
AuthorizedSession does the part worth a library: credentials and token refresh.

Credentials: application-default ones (as for Pulumi's GCP provider), imported here only. Endpoints:
LAB_COMPUTE_API, LAB_SERVICEUSAGE_API and LAB_RESOURCEMANAGER_API replace the real ones; an endpoint on a
loopback `http://` address (the tests' stand-in, tests/gcp/fake_gcp_api.py) is called with
AnonymousCredentials, so tests need no Google account. Every other endpoint, including every real one,
uses application-default credentials.

Time: every duration this module enforces (read timeouts, deadlines, pauses) is in GCP's seconds, multiplied by
`time_scale()`: 1 against GCP, and LAB_GCP_TIME_SCALE (e.g. 0.01: 120 s of GCP's time is 1.2 s) against the
tests' stand-in, which keeps GCP's time at the same scale. The scale is honoured only for a loopback endpoint, so
no setting can shorten a timeout against GCP itself.

References (the shapes parsed here):
- https://cloud.google.com/compute/docs/reference/rest/v1/instances/get, .../instances/aggregatedList,
  .../instances/start, .../instances/stop, .../instances/getGuestAttributes,
  .../zoneOperations/get, .../zoneOperations/wait and the Operation resource
- https://cloud.google.com/service-usage/docs/reference/rest/v1/services/batchGet
- https://cloud.google.com/resource-manager/reference/rest/v1/projects/getEffectiveOrgPolicy
- errors: https://cloud.google.com/apis/design/errors (`{"error": {"code", "message", "status", "errors",
  "details"}}`)
"""

from __future__ import annotations

import functools
import ipaddress
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from toolkit.errors import LabError

COMPUTE_API = "https://compute.googleapis.com/compute/v1"
SERVICEUSAGE_API = "https://serviceusage.googleapis.com/v1"
RESOURCEMANAGER_API = "https://cloudresourcemanager.googleapis.com/v1"
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
TIMEOUT_S = 30
OPERATION_TIMEOUT_S = 600
# zoneOperations.wait holds the request until the operation is DONE or "the 2 minute deadline", then answers it as it
# is (https://cloud.google.com/compute/docs/reference/rest/v1/zoneOperations/wait): its read timeout must outlast that.
WAIT_DEADLINE_S = 120
WAIT_READ_TIMEOUT_S = WAIT_DEADLINE_S + TIMEOUT_S
RETRY_PAUSE_S = 5  # before asking again after a wait that was not answered
KINDS = ("instances", "disks")
TIME_SCALE_ENV = "LAB_GCP_TIME_SCALE"  # the tests' stand-in only: real seconds per GCP second
RUNNING = "RUNNING"
STARTING = ("PROVISIONING", "STAGING")
STOPPED = ("STOPPING", "TERMINATED", "SUSPENDING", "SUSPENDED")

Say = Callable[[str], None]


class ApiError(LabError):
    """GCP answered with an error (its JSON error body, read into code, status, reasons and message)."""

    def __init__(self, what: str, code: int, status: str, message: str, reasons: tuple[str, ...] = ()) -> None:
        self.http_code = code
        self.status = status
        self.reasons = reasons
        self.api_message = message
        super().__init__(f"{what}: {message} (HTTP {code}{' ' + status if status else ''})")


class NotAsked(LabError):
    """GCP could not be asked: no credentials, no network, no google-auth."""


class NoAnswer(NotAsked):
    """A request left, and no answer came back (a timeout, a dropped connection): it may yet have been done."""


def endpoint(variable: str, default: str) -> str:
    return (os.environ.get(variable, "").strip() or default).rstrip("/")


def time_scale() -> float:
    """Real seconds per GCP second: 1, or LAB_GCP_TIME_SCALE when the Compute API is the tests' loopback stand-in
    (tests/gcp/fake_gcp_api.py keeps GCP's time at the same scale, so every rule holds in proportion)."""
    raw = os.environ.get(TIME_SCALE_ENV, "").strip()
    if not raw or not is_local(endpoint("LAB_COMPUTE_API", COMPUTE_API)):
        return 1.0
    try:
        scale = float(raw)
    except ValueError:
        scale = 0.0
    if not 0 < scale <= 1:
        raise LabError(f"{TIME_SCALE_ENV}={raw!r} is not a number in (0, 1]", hint=f"unset {TIME_SCALE_ENV}")
    return scale


def pause(seconds: float) -> None:
    """Sleep `seconds` of GCP's time."""
    time.sleep(seconds * time_scale())


def is_local(url: str) -> bool:
    """A plain-http loopback endpoint: the tests' stand-in, never a Google API."""
    parsed = urlparse(url)
    if parsed.scheme != "http" or not parsed.hostname:
        return False
    if parsed.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parsed.hostname).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=2)
def _session(local: bool) -> Any:
    try:
        import google.auth
        from google.auth import exceptions as auth_exceptions
        from google.auth.transport.requests import AuthorizedSession
    except ImportError:
        raise NotAsked(
            "google-auth is not installed", hint="install the gcp extra (`lab doctor --target gcp` names it)"
        ) from None
    if local:
        from google.auth.credentials import AnonymousCredentials

        return AuthorizedSession(AnonymousCredentials())
    try:
        credentials, _ = google.auth.default(scopes=list(SCOPES))
    except (auth_exceptions.DefaultCredentialsError, ValueError) as exc:
        raise NotAsked(
            f"no Google credentials ({str(exc).splitlines()[0]})",
            hint="gcloud auth application-default login",
        ) from None
    return AuthorizedSession(credentials, refresh_timeout=TIMEOUT_S)


def error_of(what: str, response: Any) -> ApiError:
    """GCP's JSON error body as an ApiError; a body that is not GCP's keeps its first 200 characters."""
    try:
        body = response.json().get("error") or {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {"message": str(body)}
    reasons = [str(e.get("reason")) for e in body.get("errors") or [] if isinstance(e, dict) and e.get("reason")]
    reasons += [
        str(d.get("reason"))
        for d in body.get("details") or []
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("google.rpc.ErrorInfo") and d.get("reason")
    ]
    message = str(body.get("message") or response.text[:200] or response.reason or "no message")
    return ApiError(what, int(response.status_code), str(body.get("status") or ""), message, tuple(reasons))


def call(
    method: str,
    url: str,
    what: str,
    *,
    params: dict[str, Any] | list[tuple[str, str]] | None = None,
    body: dict[str, Any] | None = None,
    timeout: float = TIMEOUT_S,
) -> dict[str, Any]:
    """One REST call; GCP's error as ApiError, no answer at all as NotAsked."""
    session = _session(is_local(url))
    try:
        response = session.request(method, url, params=params, json=body, timeout=timeout * time_scale())
    except Exception as exc:  # transport and token-refresh errors come in many types
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise NoAnswer(f"{what}: GCP did not answer ({type(exc).__name__}{': ' + first if first else ''})") from None
    if response.status_code >= 400:
        raise error_of(what, response)
    return response.json() if response.content else {}


# -- instances ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    """A VM as instances.get / aggregatedList describe it."""

    name: str
    zone: str
    status: str
    id: str
    external_ip: str | None
    internal_ip: str | None
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_api(cls, item: dict[str, Any]) -> Instance:
        interfaces = item.get("networkInterfaces") or [{}]
        first = interfaces[0] if isinstance(interfaces[0], dict) else {}
        nat = [c.get("natIP") for c in first.get("accessConfigs") or [] if isinstance(c, dict) and c.get("natIP")]
        return cls(
            name=str(item.get("name", "")),
            zone=str(item.get("zone", "")).rsplit("/", 1)[-1],
            status=str(item.get("status", "")),
            id=str(item.get("id", "")),
            external_ip=nat[0] if nat else None,
            internal_ip=first.get("networkIP"),
            labels=dict(item.get("labels") or {}),
        )


@dataclass(frozen=True)
class Listing:
    """One aggregated list: items per kind, and the scopes (zones) GCP could not answer for."""

    items: dict[str, list[dict[str, Any]]]
    unreachable: tuple[str, ...] = ()

    def instances(self) -> list[Instance]:
        return [Instance.from_api(item) for item in self.items.get("instances", [])]


def _pages(url: str, params: dict[str, str], what: str) -> Iterator[dict[str, Any]]:
    query = dict(params)
    while True:
        page = call("GET", url, what, params=query)
        yield page
        token = page.get("nextPageToken")
        if not token:
            return
        query["pageToken"] = str(token)


def labelled(project: str, stack_label: str, kinds: tuple[str, ...] = KINDS) -> Listing:
    """Everything of `kinds` in the project labelled lab=<stack_label>, across zones (aggregatedList with
    returnPartialSuccess: a zone that does not answer is named in `unreachable`, not an error)."""
    if not project:
        raise LabError("the stack has no gcp:project to look in")
    base = endpoint("LAB_COMPUTE_API", COMPUTE_API)
    items: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    unreachable: list[str] = []
    for kind in kinds:
        params = {"filter": f"labels.lab={stack_label}", "returnPartialSuccess": "true"}
        for page in _pages(f"{base}/projects/{project}/aggregated/{kind}", params, f"listing {kind}"):
            unreachable += [str(s) for s in page.get("unreachables") or []]
            for scope, listing in (page.get("items") or {}).items():
                warning = (listing or {}).get("warning") or {}
                if warning and warning.get("code") != "NO_RESULTS_ON_PAGE":
                    unreachable.append(f"{scope} ({warning.get('code')}: {warning.get('message', '')})".strip())
                for item in (listing or {}).get(kind) or []:
                    items[kind].append({**item, "zone": item.get("zone") or scope})
    return Listing(items=items, unreachable=tuple(dict.fromkeys(unreachable)))


def describe(listing: Listing) -> list[str]:
    """'<kind> <name> in <zone>' for each item of a listing."""
    return [
        f"{kind[:-1]} {item.get('name')} in {str(item.get('zone', '')).rsplit('/', 1)[-1]}"
        for kind, found in listing.items.items()
        for item in found
    ]


def labelled_resources(project: str, stack_label: str) -> Listing:
    """Instances and disks of the project labelled lab=<stack_label> (what `lab down` must not leave)."""
    return labelled(project, stack_label, KINDS)


@dataclass(frozen=True)
class LeftoverCheck:
    """The outcome of asking GCP what a stack left: what was found, and whether the answer is complete
    (`checked` is False when GCP could not be asked, or some zones did not answer: `why`). Iterating it
    gives the found lines, so `left += check` reads like the list it replaces."""

    found: tuple[str, ...]
    checked: bool
    project: str
    label: str
    why: str = ""

    def __iter__(self) -> Iterator[str]:
        return iter(self.found)

    def commands(self) -> str:
        """The gcloud commands that answer the question by hand."""
        return " and ".join(
            f"`gcloud compute {kind} list --project {self.project} --filter=labels.lab={self.label}`" for kind in KINDS
        )


def check_leftovers(project: str, stack_label: str) -> LeftoverCheck:
    """Ask GCP what is still labelled with the stack; never raises for GCP's sake (an answer that could not be
    had is `checked=False` with the reason)."""
    try:
        listing = labelled_resources(project, stack_label)
    except LabError as exc:
        return LeftoverCheck((), False, project, stack_label, exc.one_line())
    why = f"no answer from {', '.join(listing.unreachable)}" if listing.unreachable else ""
    return LeftoverCheck(tuple(describe(listing)), not listing.unreachable, project, stack_label, why)


def get_instance(project: str, zone: str, name: str) -> Instance | None:
    """instances.get; None when there is no such VM (404)."""
    base = endpoint("LAB_COMPUTE_API", COMPUTE_API)
    try:
        item = call("GET", f"{base}/projects/{project}/zones/{zone}/instances/{name}", f"reading VM {name}")
    except ApiError as exc:
        if exc.http_code == 404:
            return None
        raise
    return Instance.from_api(item)


def host_keys(project: str, zone: str, name: str) -> dict[str, str]:
    """The VM's SSH host keys as the guest agent published them: {key type: base64 key}.

    The agent writes guest attribute `hostkeys/<type>` = the base64 part of each /etc/ssh/ssh_host_*_key.pub
    on the instance's first boot (GoogleCloudPlatform/guest-agent google_guest_agent/instance_setup.go,
    generateSSHKeys, commit bf28b76a); the VM needs metadata `enable-guest-attributes: TRUE`. Empty when
    nothing is published yet (404: the agent has not written them, or guest attributes are off)."""
    base = endpoint("LAB_COMPUTE_API", COMPUTE_API)
    try:
        answer = call(
            "GET",
            f"{base}/projects/{project}/zones/{zone}/instances/{name}/getGuestAttributes",
            f"reading the host keys of {name}",
            params={"queryPath": "hostkeys/"},
        )
    except ApiError as exc:
        if exc.http_code == 404:
            return {}
        raise
    keys: dict[str, str] = {}
    for item in (answer.get("queryValue") or {}).get("items") or []:
        if isinstance(item, dict) and item.get("namespace") == "hostkeys" and item.get("key") and item.get("value"):
            keys[str(item["key"])] = str(item["value"]).strip()
    return keys


# -- operations: start, stop ----------------------------------------------------------------------------------


class StillRunning(LabError):
    """A zone operation was still running when the caller's deadline passed (it goes on at GCP)."""


class OperationFailed(LabError):
    """A zone operation ended with errors; `text` is 'CODE: message' per error (what capacity.classify reads)."""

    def __init__(self, what: str, errors: list[dict[str, Any]]) -> None:
        self.codes = tuple(str(e.get("code", "")) for e in errors)
        self.text = "; ".join(f"{e.get('code', 'ERROR')}: {e.get('message', '')}".strip() for e in errors)
        super().__init__(f"{what} failed: {self.text}")


def wait(project: str, zone: str, operation: dict[str, Any], what: str, timeout: float | None = None) -> dict[str, Any]:
    """Wait for a zone operation until it is DONE or `timeout` (default OPERATION_TIMEOUT_S) passes, and return it.
    zoneOperations.wait answers when the operation is DONE or at its own ~2-minute deadline, so it is asked again
    (each time with a read timeout past that deadline); a wait that got no answer (NoAnswer) is asked again too, as
    the operation goes on at GCP regardless. Its errors raise OperationFailed; the deadline raises StillRunning."""
    base = endpoint("LAB_COMPUTE_API", COMPUTE_API)
    timeout = OPERATION_TIMEOUT_S if timeout is None else timeout
    scale = time_scale()
    deadline = time.monotonic() + timeout * scale
    while operation.get("status") != "DONE":
        left = (deadline - time.monotonic()) / scale  # GCP seconds
        if left <= 0:
            raise StillRunning(f"{what} did not finish within {timeout:.0f} s", hint="look at it in the console")
        name = operation.get("name")
        try:
            operation = call(
                "POST",
                f"{base}/projects/{project}/zones/{zone}/operations/{name}/wait",
                what,
                timeout=min(WAIT_READ_TIMEOUT_S, left + 1),  # past the wait's own deadline, not past ours
            )
        except NoAnswer:
            pause(min(RETRY_PAUSE_S, max(left, 0)))
    errors = operation_errors(operation)
    if errors:
        raise OperationFailed(what, errors)
    return operation


def _post_and_wait(project: str, zone: str, name: str, verb: str, what: str) -> None:
    base = endpoint("LAB_COMPUTE_API", COMPUTE_API)
    operation = call("POST", f"{base}/projects/{project}/zones/{zone}/instances/{name}/{verb}", what)
    wait(project, zone, operation, what)


def start_stopped(
    project: str, zone: str, names: list[str], say: Say = lambda line: None, timeout: float = OPERATION_TIMEOUT_S
) -> list[str]:
    """Start the VMs of `names` that are stopped (a preempted or idle-powered-off spot worker is TERMINATED);
    returns the names it started. Running or starting VMs and VMs that do not exist are left alone; a VM
    still STOPPING is waited for first. A start GCP refuses raises OperationFailed, whose `text` carries the
    operation's codes (ZONE_RESOURCE_POOL_EXHAUSTED when a spot VM has no capacity to restart into)."""
    started: list[str] = []
    for name in names:
        deadline = time.monotonic() + timeout * time_scale()
        instance = get_instance(project, zone, name)
        while instance is not None and instance.status in ("STOPPING", "SUSPENDING"):
            if time.monotonic() > deadline:
                raise LabError(f"{name} is still {instance.status} after {timeout:.0f} s", hint="try again later")
            pause(2)
            instance = get_instance(project, zone, name)
        if instance is None or instance.status not in ("TERMINATED", "SUSPENDED"):
            continue
        if instance.status == "SUSPENDED":
            say(f"resuming {name} (it was suspended)")
            _post_and_wait(project, zone, name, "resume", f"resuming {name}")
        else:
            say(f"starting {name} (it was stopped: preempted, or powered off when idle)")
            _post_and_wait(project, zone, name, "start", f"starting {name}")
        started.append(name)
    return started


def start_instance(project: str, zone: str, name: str) -> dict[str, Any]:
    """Ask GCP to start a stopped VM and return at once with its Operation (instances.start); the operation's
    outcome (a stockout shows only there) is read later with `get_operation`. Starting a VM that is already
    running is a no-op on GCP's side: the operation finishes without an error."""
    base = endpoint("LAB_COMPUTE_API", COMPUTE_API)
    return call("POST", f"{base}/projects/{project}/zones/{zone}/instances/{name}/start", f"starting {name}")


def get_operation(project: str, zone: str, name: str) -> dict[str, Any]:
    """A zone operation as it is now (zoneOperations.get: permission compute.zoneOperations.get); never waits."""
    base = endpoint("LAB_COMPUTE_API", COMPUTE_API)
    return call("GET", f"{base}/projects/{project}/zones/{zone}/operations/{name}", f"reading operation {name}")


def operation_errors(operation: dict[str, Any]) -> list[dict[str, Any]]:
    """The errors a finished operation ended with ([] while it runs, or when it succeeded)."""
    errors = (operation.get("error") or {}).get("errors") or []
    return [e for e in errors if isinstance(e, dict)]


def stop_instance(project: str, zone: str, name: str) -> bool:
    """Stop a VM and wait until it is stopped; False when there is no such VM. Stopping a stopped VM is a
    no-op on GCP's side (the operation finishes at once)."""
    try:
        _post_and_wait(project, zone, name, "stop", f"stopping {name}")
    except ApiError as exc:
        if exc.http_code == 404:
            return False
        raise
    return True


# -- project setup (lab doctor) -------------------------------------------------------------------------------


def service_states(project: str, services: tuple[str, ...]) -> dict[str, str]:
    """{service: ENABLED | DISABLED | STATE_UNSPECIFIED} for each service (serviceusage services.batchGet,
    at most 30 a request)."""
    base = endpoint("LAB_SERVICEUSAGE_API", SERVICEUSAGE_API)
    params = [("names", f"projects/{project}/services/{service}") for service in services]
    answer = call("GET", f"{base}/projects/{project}/services:batchGet", "reading the project's APIs", params=params)
    states = {service: "STATE_UNSPECIFIED" for service in services}
    for entry in answer.get("services") or []:
        name = str(entry.get("name", "")).rsplit("/services/", 1)[-1]
        if name in states:
            states[name] = str(entry.get("state", "STATE_UNSPECIFIED"))
    return states


def effective_org_policy(project: str, constraint: str) -> dict[str, Any]:
    """The organization policy in force on the project for a constraint (Resource Manager v1
    projects.getEffectiveOrgPolicy): `booleanPolicy`, `listPolicy`, or neither (the constraint's default)."""
    base = endpoint("LAB_RESOURCEMANAGER_API", RESOURCEMANAGER_API)
    return call(
        "POST",
        f"{base}/projects/{project}:getEffectiveOrgPolicy",
        f"reading the organization policy {constraint}",
        body={"constraint": constraint},
    )


# -- quotas (lab doctor, and `lab up`'s pre-flight: toolkit.gcp.quotas) -----------------------------------------
# Compute's regions.get and projects.get both answer `quotas[]` of {metric, limit, usage} (the Quota resource:
# https://cloud.google.com/compute/docs/reference/rest/v1/regions/get,
# https://cloud.google.com/compute/docs/reference/rest/v1/projects/get): a region's (CPUS, A2_CPUS, NVIDIA_A100_GPUS,
# PREEMPTIBLE_NVIDIA_A100_GPUS, ...) and the project's across regions (GPUS_ALL_REGIONS, CPUS_ALL_REGIONS, ...).

Quotas = dict[str, tuple[float, float]]  # metric -> (limit, usage)


def _quotas(answer: dict[str, Any]) -> Quotas:
    found: Quotas = {}
    for entry in answer.get("quotas") or []:
        if isinstance(entry, dict) and entry.get("metric"):
            found[str(entry["metric"])] = (float(entry.get("limit") or 0), float(entry.get("usage") or 0))
    return found


def region_quotas(project: str, region: str) -> Quotas:
    base = endpoint("LAB_COMPUTE_API", COMPUTE_API)
    return _quotas(call("GET", f"{base}/projects/{project}/regions/{region}", f"reading the quotas of {region}"))


def project_quotas(project: str) -> Quotas:
    base = endpoint("LAB_COMPUTE_API", COMPUTE_API)
    return _quotas(call("GET", f"{base}/projects/{project}", "reading the project's quotas"))
