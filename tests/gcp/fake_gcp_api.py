"""A stand-in for the Google Cloud REST APIs lab calls itself (toolkit.gcp.api), served over real HTTP on
127.0.0.1 from a thread. It answers in the shapes of GCP's reference documentation, each route citing its page:

- instances.get          https://cloud.google.com/compute/docs/reference/rest/v1/instances/get
- instances.aggregatedList (and disks)
                         https://cloud.google.com/compute/docs/reference/rest/v1/instances/aggregatedList
                         (items keyed by "zones/<zone>"; a zone without results carries
                         warning.code NO_RESULTS_ON_PAGE; with returnPartialSuccess a zone that failed is
                         named in `unreachables` and its scope carries warning.code UNREACHABLE)
- instances.start / stop https://cloud.google.com/compute/docs/reference/rest/v1/instances/start, .../stop
                         (each answers an Operation; https://cloud.google.com/compute/docs/reference/rest/v1/zoneOperations)
- zoneOperations.wait    https://cloud.google.com/compute/docs/reference/rest/v1/zoneOperations/wait ("waits for no
                         more than the 2 minutes and then returns the current state of the operation, which might be
                         DONE or still in progress")
- zoneOperations.get     https://cloud.google.com/compute/docs/reference/rest/v1/zoneOperations/get (an operation
                         stays RUNNING for `operation_reads` reads, then is DONE)

Time, as GCP keeps it (see "Compute with time" below the imports): a stop runs the guest's shutdown and powers
the VM off at the shutdown window's end whatever the guest is doing; a start takes its time in STAGING; a wait
answers when the operation is DONE or at its own deadline, with the operation still RUNNING.
- instances.start on a VM still STOPPING: HTTP 400, reason resourceNotReady, "The resource '<name>' is not ready"
                         (GCE's text for a resource mid-operation, as quoted in tests/data/gcp_errors, see SOURCES.md)
- instances.getGuestAttributes
                         https://cloud.google.com/compute/docs/reference/rest/v1/instances/getGuestAttributes
                         (queryValue.items of {namespace, key, value}; the guest agent writes
                         hostkeys/<type> = base64 key: GoogleCloudPlatform/guest-agent
                         google_guest_agent/instance_setup.go, commit bf28b76a)
- services.batchGet      https://cloud.google.com/service-usage/docs/reference/rest/v1/services/batchGet
- projects.getEffectiveOrgPolicy
                         https://cloud.google.com/resource-manager/reference/rest/v1/projects/getEffectiveOrgPolicy
- regions.get, projects.get (their `quotas[]`): see the "quotas" block below
- IAM: each Compute route needs the permission its page names (COMPUTE_PERMISSIONS); a caller `granted` only some
  gets GCE's 403 "Required '<permission>' permission for '<resource>'" for the others

Errors use GCP's JSON error body ({"error": {"code", "message", "errors": [{"message", "domain", "reason"}],
"status", "details"}}, https://cloud.google.com/apis/design/errors); the texts are real ones kept in
tests/data/gcp_errors (see SOURCES.md there). What it does not know it answers with 501, so a test that
reaches an unmodelled call fails loudly instead of passing on a guess.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

COMPUTE = "/compute/v1"
SERVICEUSAGE = "/serviceusage/v1"
RESOURCEMANAGER = "/resourcemanager/v1"

# -- Compute with time ------------------------------------------------------------------------------------------
# GCP's rules, in GCP's seconds, always enforced; what a guest does in them is the test's scenario.
# zoneOperations.wait "waits for no more than the 2 minutes and then returns the current state of the operation,
# which might be DONE or still in progress" (https://cloud.google.com/compute/docs/reference/rest/v1/zoneOperations/wait).
WAIT_DEADLINE_S = 120.0
# From the stop request, the guest has this long to shut down before the VM is powered off: "On-demand instances:
# 90 seconds after you stop or delete an instance; Preemptible instances: 30 seconds after instance preemption
# begins" (https://cloud.google.com/compute/docs/shutdownscript, "Limitations"); Spot VMs get the preemptible
# process's 30 s (https://cloud.google.com/compute/docs/instances/spot, "Preemption process").
SHUTDOWN_WINDOW_S = {"standard": 90.0, "spot": 30.0}
# No operation finishes at once: a guest the test gave no shutdown steps still takes its system's own shutdown
# (systemd stopping its units), and a start spends time in PROVISIONING/STAGING before RUNNING
# (https://cloud.google.com/compute/docs/instances/instance-life-cycle). Tests that time a step set their own.
DEFAULT_SHUTDOWN_S = 5.0
DEFAULT_START_S = 15.0
# The stand-in runs GCP's time at this many real seconds per GCP second, and hands the same factor to the client
# (LAB_GCP_TIME_SCALE, toolkit.gcp.api.time_scale): both sides scale every duration alike, so every comparison
# (the client's read timeout against the wait's deadline, a guest's shutdown against the window) holds as on GCP.
TIME_SCALE = 0.01
TICK_S = 0.002  # real seconds between the stand-in's looks at its clock
STOPS = ("stop", "compute.instances.preempted")  # the operations that run a guest's shutdown


@dataclass(frozen=True)
class Step:
    """One step of a guest's shutdown: `seconds` of GCP time, then `done()` (e.g. the final backup's upload)."""

    name: str
    seconds: float
    done: Callable[[], None] | None = None


def error_body(code: int, message: str, reason: str, status: str = "", details: list | None = None) -> dict:
    body: dict[str, Any] = {
        "code": code,
        "message": message,
        "errors": [{"message": message, "domain": "global", "reason": reason}],
    }
    if status:
        body["status"] = status
    if details:
        body["details"] = details
    return {"error": body}


# The permission each Compute route needs, as its reference page names it ("IAM Permissions"; e.g.
# https://cloud.google.com/compute/docs/reference/rest/v1/instances/aggregatedList: compute.instances.list,
# .../zoneOperations/wait: compute.zoneOperations.get, as globalOperations/wait names compute.globalOperations.get).
COMPUTE_PERMISSIONS = (
    ("GET", r"/projects/[^/]+/aggregated/(instances|disks)", "compute.{0}.list"),
    ("POST", r"/projects/[^/]+/zones/[^/]+/operations/[^/]+/wait", "compute.zoneOperations.get"),
    ("GET", r"/projects/[^/]+/zones/[^/]+/operations/[^/]+", "compute.zoneOperations.get"),
    ("GET", r"/projects/[^/]+/zones/[^/]+/instances/[^/]+", "compute.instances.get"),
    ("GET", r"/projects/[^/]+/zones/[^/]+/instances/[^/]+/(getGuestAttributes)", "compute.instances.{0}"),
    ("POST", r"/projects/[^/]+/zones/[^/]+/instances/[^/]+/(start|stop|resume)", "compute.instances.{0}"),
    ("GET", r"/projects/[^/]+/regions/[^/]+", "compute.regions.get"),
    ("GET", r"/projects/[^/]+", "compute.projects.get"),
)


def compute_permission(method: str, path: str) -> str | None:
    for verb, pattern, permission in COMPUTE_PERMISSIONS:
        if method == verb and (match := re.fullmatch(pattern, path)):
            return permission.format(*match.groups())
    return None


def not_found(resource: str) -> tuple[int, dict]:
    # The text GCE gives for a missing resource, e.g. cloud-barista/cb-spider#340: "googleapi: Error 404: The
    # resource 'projects/etri-jhseo-test-266608/zones/asia-south1-a/instances/gcp-asia-south1-gcp1-0' was not
    # found, notFound"
    return 404, error_body(404, f"The resource '{resource}' was not found", "notFound")


@dataclass
class FakeInstance:
    name: str
    zone: str
    status: str = "RUNNING"
    external_ip: str | None = "198.51.100.10"
    internal_ip: str = "10.128.0.2"
    labels: dict[str, str] = field(default_factory=dict)
    id: str = ""
    host_keys: dict[str, str] = field(default_factory=dict)  # guest attributes hostkeys/<type>
    start_error: dict | None = None  # an Operation error the next start ends with (e.g. a stockout)
    next_ip: str | None = None  # the ephemeral address a start gives it
    spot: bool = False  # spot/preemptible: a 30 s shutdown window, else 90 s
    shutdown: list[Step] = field(default_factory=list)  # what the guest does from the stop signal, in order
    start_s: float = DEFAULT_START_S  # GCP seconds in STAGING before a start is RUNNING
    shut_down: list[str] = field(default_factory=list)  # the shutdown steps that finished before the power-off
    cut: bool = False  # the last stop powered the VM off while its guest was still shutting down
    stopped_after_s: float | None = None  # GCP seconds from the last stop request to the power-off

    @property
    def window_s(self) -> float:
        return SHUTDOWN_WINDOW_S["spot" if self.spot else "standard"]

    def as_api(self, project: str) -> dict[str, Any]:
        access = (
            [{"type": "ONE_TO_ONE_NAT", "name": "External NAT", "natIP": self.external_ip}] if self.external_ip else []
        )
        # a stopped VM keeps its access config but has released its ephemeral natIP
        if self.status != "RUNNING":
            access = [{"type": "ONE_TO_ONE_NAT", "name": "External NAT"}]
        return {
            "kind": "compute#instance",
            "id": self.id,
            "name": self.name,
            "zone": f"https://www.googleapis.com/compute/v1/projects/{project}/zones/{self.zone}",
            "status": self.status,
            "labels": self.labels,
            "networkInterfaces": [{"name": "nic0", "networkIP": self.internal_ip, "accessConfigs": access}],
        }


@dataclass
class FakeGcp:
    project: str = "my-gcp-project"
    instances: dict[str, FakeInstance] = field(default_factory=dict)
    disks: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {zone, labels}
    services: dict[str, str] = field(default_factory=dict)  # service -> ENABLED | DISABLED
    org_policies: dict[str, dict[str, Any]] = field(default_factory=dict)  # constraint -> effective policy
    page_size: int = 500
    unreachable_zones: tuple[str, ...] = ()
    fail: dict[str, tuple[int, dict]] = field(default_factory=dict)  # path substring -> (status, body)
    requests: list[tuple[str, str]] = field(default_factory=list)
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)
    stopping_polls: int = 1  # how many reads a STOPPING VM stays STOPPING
    operation_reads: int = 0  # how many zoneOperations.get reads an operation stays RUNNING
    # The VMs the caller's IAM condition names (None: all). instances.start/stop need compute.instances.start/stop
    # on the VM (https://cloud.google.com/compute/docs/reference/rest/v1/instances/stop: "Requires the following IAM
    # permission on the specified resource instance: compute.instances.stop"); a VM outside the condition answers
    # 403 with GCE's text, as for compute.instances.get in test_revive.
    controllable: set[str] | None = None
    caller: str = "lab-dev-tracker@my-gcp-project.iam.gserviceaccount.com"
    # The caller's permissions on the project (None: all, as its owner). A Compute call whose permission is not among
    # them answers 403 with GCE's text (compute_permission names each route's); `used` keeps those asked for.
    granted: frozenset[str] | None = None
    used: set[str] = field(default_factory=set)
    # scope ("global" or a region) -> {metric: (limit, usage)}; see the "quotas" block below
    quotas: dict[str, dict[str, tuple[float, float]]] = field(default_factory=lambda: default_quotas())
    url: str = ""
    scale: float = TIME_SCALE  # real seconds per GCP second
    drop_waits: int = 0  # how many zoneOperations.wait requests lose their connection without an answer
    waits: list[tuple[str, str, float]] = field(default_factory=list)  # (operation, status answered, GCP s held)
    _lock: Any = field(default_factory=threading.RLock)
    _epoch: float = field(default_factory=time.monotonic)
    _timers: list[tuple[float, Callable[[], None]]] = field(default_factory=list)  # (GCP time due, what happens)
    _ids: Any = field(default_factory=lambda: itertools.count(1000))
    _ips: Any = field(default_factory=lambda: itertools.count(20))

    # -- test helpers -----------------------------------------------------------------------------------------

    def add(self, name: str, zone: str = "us-central1-a", **kwargs: Any) -> FakeInstance:
        instance = FakeInstance(name=name, zone=zone, **kwargs)
        if not instance.id:
            instance.id = str(next(self._ids) * 7919)
        self.instances[name] = instance
        return instance

    def preempt(self, name: str) -> dict[str, Any]:
        """GCP reclaims a spot VM: a system operation of type compute.instances.preempted ("Detect preemption",
        https://cloud.google.com/compute/docs/instances/create-use-spot#detect-preemption), the guest's shutdown
        cut at the spot window's end (30 s), then TERMINATED (instanceTerminationAction STOP keeps the VM)."""
        instance = self.instances[name]
        if not instance.spot:
            raise ValueError(f"{name} is not a spot VM: GCP preempts only spot and preemptible VMs")
        answer = self.operation(instance, "compute.instances.preempted")
        self.operations[answer["name"]]["user"] = "system"
        return answer

    def env(self) -> dict[str, str]:
        return {
            "LAB_COMPUTE_API": self.url + COMPUTE,
            "LAB_SERVICEUSAGE_API": self.url + SERVICEUSAGE,
            "LAB_RESOURCEMANAGER_API": self.url + RESOURCEMANAGER,
            "LAB_GCP_TIME_SCALE": repr(self.scale),
        }

    # -- GCP's clock ------------------------------------------------------------------------------------------

    def now(self) -> float:
        """GCP seconds since the stand-in started."""
        return (time.monotonic() - self._epoch) / self.scale

    def at(self, due: float, what: Callable[[], None]) -> None:
        """`what` happens at GCP time `due` (at once if that is now or past)."""
        with self._lock:
            self._timers.append((due, what))
        self.tick()

    def tick(self) -> None:
        """Everything that is due by GCP's clock happens, in time order (the server's ticker calls this, and so
        does every request before it answers)."""
        with self._lock:
            while True:
                now = self.now()
                due = sorted((t for t in self._timers if t[0] <= now), key=lambda t: t[0])
                if not due:
                    return
                self._timers.remove(due[0])
                due[0][1]()

    # -- routes -----------------------------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, body: dict[str, Any]) -> tuple[int, dict]:
        parsed = urlparse(raw_path)
        path, query = parsed.path, parse_qs(parsed.query)
        self.requests.append((method, raw_path))
        for part, answer in self.fail.items():
            if part in raw_path:
                return answer
        if path.startswith(COMPUTE):
            return self.compute(method, path[len(COMPUTE) :], query)
        if path.startswith(SERVICEUSAGE):
            return self.serviceusage(method, path[len(SERVICEUSAGE) :], query)
        if path.startswith(RESOURCEMANAGER):
            return self.resourcemanager(method, path[len(RESOURCEMANAGER) :], body)
        return 501, error_body(501, f"the stand-in does not know {method} {path}", "notImplemented")

    def compute(self, method: str, path: str, query: dict[str, list[str]]) -> tuple[int, dict]:
        permission = compute_permission(method, path)
        if permission is not None:
            self.used.add(permission)
            if self.granted is not None and permission not in self.granted:
                resource = path.removeprefix("/").removesuffix("/wait")
                return 403, error_body(403, f"Required '{permission}' permission for '{resource}'", "forbidden")
        if (answer := self.quota_routes(method, path)) is not None:
            return answer
        if match := re.fullmatch(r"/projects/([^/]+)/aggregated/(instances|disks)", path):
            return self.aggregated(match.group(2), query)
        if match := re.fullmatch(r"/projects/([^/]+)/zones/([^/]+)/operations/([^/]+)/wait", path):
            operation = self.operations.get(match.group(3))
            if operation is None:
                return not_found(f"projects/{self.project}/zones/{match.group(2)}/operations/{match.group(3)}")
            return 200, self.wait(operation)
        if match := re.fullmatch(r"/projects/([^/]+)/zones/([^/]+)/operations/([^/]+)", path):
            operation = self.operations.get(match.group(3))
            if method != "GET" or operation is None:
                return not_found(f"projects/{self.project}/zones/{match.group(2)}/operations/{match.group(3)}")
            self.tick()
            if operation["status"] == "DONE" and self.operation_reads > 0:
                self.operation_reads -= 1
                return 200, {**operation, "status": "RUNNING"}
            return 200, dict(operation)
        match = re.fullmatch(r"/projects/([^/]+)/zones/([^/]+)/instances/([^/]+)(?:/(\w+))?", path)
        if not match:
            return 501, error_body(501, f"the stand-in does not know {method} {path}", "notImplemented")
        _, zone, name, verb = match.groups()
        instance = self.instances.get(name)
        resource = f"projects/{self.project}/zones/{zone}/instances/{name}"
        if instance is None or instance.zone != zone:
            return not_found(resource)
        self.tick()
        if method == "GET" and verb is None:
            if instance.status == "STOPPING" and not self.stopping_on_schedule(instance):
                self.stopping_polls -= 1
                if self.stopping_polls < 0:
                    instance.status = "TERMINATED"
            return 200, instance.as_api(self.project)
        if method == "GET" and verb == "getGuestAttributes":
            path_asked = (query.get("queryPath") or [""])[0]
            if not instance.host_keys or path_asked != "hostkeys/":
                return not_found(f"{resource}/guestAttributes/{path_asked}")
            items = [{"namespace": "hostkeys", "key": k, "value": v} for k, v in instance.host_keys.items()]
            return 200, {"kind": "compute#guestAttributes", "queryPath": path_asked, "queryValue": {"items": items}}
        if method == "POST" and verb == "start" and instance.status == "STOPPING":
            return 400, error_body(400, f"The resource '{resource}' is not ready", "resourceNotReady")
        if method == "POST" and verb in ("start", "stop") and not self.may_control(name):
            message = f"Required 'compute.instances.{verb}' permission for '{resource}'"
            return 403, error_body(403, message, "forbidden")
        if method == "POST" and verb in ("start", "stop"):
            return 200, self.operation(instance, verb)
        return 501, error_body(501, f"the stand-in does not know {method} {path}", "notImplemented")

    def may_control(self, name: str) -> bool:
        return self.controllable is None or name in self.controllable

    def wait(self, operation: dict[str, Any]) -> dict[str, Any]:
        """zoneOperations.wait: hold the request until the operation is DONE or the wait's own deadline passes, then
        answer the operation as it is (RUNNING at the deadline)."""
        started = self.now()
        while operation["status"] != "DONE" and self.now() - started < WAIT_DEADLINE_S:
            time.sleep(TICK_S)
            self.tick()
        self.waits.append((operation["name"], operation["status"], self.now() - started))
        return dict(operation)

    def stopping_on_schedule(self, instance: FakeInstance) -> bool:
        """A VM this stand-in is stopping keeps its own time (a VM a test set STOPPING follows `stopping_polls`)."""
        return any(
            op["status"] != "DONE" and op["operationType"] in STOPS and op["targetId"] == instance.id
            for op in self.operations.values()
        )

    def stop(self, instance: FakeInstance, operation: dict[str, Any]) -> None:
        """The guest gets the stop signal now; each step of its shutdown finishes in turn, and the VM is powered
        off when the guest is done or at the window's end, whatever it is doing then."""
        signal = self.now()
        if instance.status == "TERMINATED":
            self.finish(operation)  # stopping a stopped VM: nothing to do
            return
        instance.status, instance.shut_down, instance.cut = "STOPPING", [], False
        steps = instance.shutdown or [Step("the guest's own shutdown", DEFAULT_SHUTDOWN_S)]
        elapsed = 0.0
        for step in steps:
            elapsed += step.seconds
            if elapsed > instance.window_s:
                break
            self.at(signal + elapsed, functools.partial(self.step_done, instance, step))
        needed = sum(step.seconds for step in steps)

        def power_off() -> None:
            instance.status = "TERMINATED"
            instance.cut = needed > instance.window_s
            instance.stopped_after_s = min(needed, instance.window_s)
            self.finish(operation)

        self.at(signal + min(needed, instance.window_s), power_off)

    @staticmethod
    def step_done(instance: FakeInstance, step: Step) -> None:
        instance.shut_down.append(step.name)
        if step.done:
            step.done()

    def start(self, instance: FakeInstance, operation: dict[str, Any]) -> None:
        """PROVISIONING/STAGING for `start_s`, then RUNNING with a new ephemeral address (or the stockout)."""
        if instance.start_error:
            operation["error"] = {"errors": [instance.start_error]}
            operation["httpErrorStatusCode"] = 503
            operation["httpErrorMessage"] = "SERVICE UNAVAILABLE"
            instance.start_error = None
            self.finish(operation)
            return
        if instance.status == "RUNNING":
            self.finish(operation)  # starting a running VM: nothing to do
            return
        instance.status = "STAGING"

        def running() -> None:
            instance.external_ip = instance.next_ip or f"203.0.113.{next(self._ips)}"
            instance.status = "RUNNING"
            self.finish(operation)

        self.at(self.now() + instance.start_s, running)

    @staticmethod
    def finish(operation: dict[str, Any]) -> None:
        operation["status"], operation["progress"] = "DONE", 100

    def operation(self, instance: FakeInstance, verb: str) -> dict[str, Any]:
        # The Operation resource instances.start/stop answer, with the fields its reference page documents
        # (https://cloud.google.com/compute/docs/reference/rest/v1/zoneOperations#Operation): id, name,
        # operationType, targetLink, targetId, status (PENDING, RUNNING, DONE), progress, user, insertTime,
        # selfLink, zone.
        name = f"operation-{len(self.operations) + 1}-{verb}"
        zone_link = f"https://www.googleapis.com/compute/v1/projects/{self.project}/zones/{instance.zone}"
        operation: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(next(self._ids) * 104729),
            "name": name,
            "operationType": verb,
            "targetLink": f"projects/{self.project}/zones/{instance.zone}/instances/{instance.name}",
            "targetId": instance.id,
            "status": "RUNNING",
            "progress": 0,
            "user": self.caller,
            "insertTime": "2026-12-02T01:40:00.000-08:00",
            "selfLink": f"{zone_link}/operations/{name}",
            "zone": instance.zone,
        }
        self.operations[name] = operation
        answer = dict(operation)  # as GCP answers the POST: the operation as it was asked, RUNNING
        with self._lock:
            (self.start if verb == "start" else self.stop)(instance, operation)
        return answer

    def aggregated(self, kind: str, query: dict[str, list[str]]) -> tuple[int, dict]:
        wanted = (query.get("filter") or [""])[0]
        match = re.fullmatch(r"labels\.lab=(\S+)", wanted)
        label = match.group(1) if match else None
        rows: list[tuple[str, dict]] = []
        if kind == "instances":
            rows = [
                (i.zone, i.as_api(self.project))
                for i in self.instances.values()
                if label is None or i.labels.get("lab") == label
            ]
        else:
            rows = [
                (d["zone"], {"kind": "compute#disk", "name": n, "labels": d.get("labels", {})})
                for n, d in self.disks.items()
                if label is None or d.get("labels", {}).get("lab") == label
            ]
        rows = [(zone, item) for zone, item in rows if zone not in self.unreachable_zones]
        start = int((query.get("pageToken") or ["0"])[0])
        page = rows[start : start + self.page_size]
        items: dict[str, Any] = {}
        for zone, item in page:
            items.setdefault(f"zones/{zone}", {kind: []})[kind].append(item)
        items.setdefault(
            "zones/europe-west4-a",
            {
                "warning": {
                    "code": "NO_RESULTS_ON_PAGE",
                    "message": "There are no results for scope 'zones/europe-west4-a' on this page.",
                }
            },
        )
        answer: dict[str, Any] = {"kind": f"compute#{kind[:-1]}AggregatedList", "items": items}
        if (query.get("returnPartialSuccess") or [""])[0] == "true" and self.unreachable_zones:
            answer["unreachables"] = [f"zones/{zone}" for zone in self.unreachable_zones]
            for zone in self.unreachable_zones:
                items[f"zones/{zone}"] = {
                    "warning": {"code": "UNREACHABLE", "message": f"The zone 'zones/{zone}' is unreachable."}
                }
        if start + self.page_size < len(rows):
            answer["nextPageToken"] = str(start + self.page_size)
        return 200, answer

    def serviceusage(self, method: str, path: str, query: dict[str, list[str]]) -> tuple[int, dict]:
        if method != "GET" or not re.fullmatch(r"/projects/([^/]+)/services:batchGet", path):
            return 501, error_body(501, f"the stand-in does not know {method} {path}", "notImplemented")
        services = []
        for name in query.get("names", []):
            service = name.rsplit("/services/", 1)[-1]
            # the answer names the project by number, as the reference's example does ("projects/123/...")
            services.append(
                {
                    "name": f"projects/123456789012/services/{service}",
                    "parent": "projects/123456789012",
                    "state": self.services.get(service, "DISABLED"),
                }
            )
        return 200, {"services": services}

    def resourcemanager(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict]:
        if method != "POST" or not re.fullmatch(r"/projects/([^/:]+):getEffectiveOrgPolicy", path):
            return 501, error_body(501, f"the stand-in does not know {method} {path}", "notImplemented")
        constraint = str(body.get("constraint", ""))
        policy = {"version": 1, "constraint": constraint, **self.org_policies.get(constraint, {})}
        return 200, policy

    # -- quotas: regions.get and projects.get ---------------------------------------------------------------------
    # https://cloud.google.com/compute/docs/reference/rest/v1/regions/get and .../v1/projects/get: the Region and
    # Project resources carry `quotas[]` of {metric, limit, usage} (and `owner`, for a project's; limits are
    # doubles: "limit": 16.0). A region's lists its regional metrics (CPUS, A2_CPUS, NVIDIA_A100_GPUS,
    # PREEMPTIBLE_NVIDIA_A100_GPUS, PREEMPTIBLE_CPUS, ...), a project's the project-wide ones (GPUS_ALL_REGIONS,
    # CPUS_ALL_REGIONS, ...); metric names from the Quota.metric enum of the Compute v1 API. A region GCP does not
    # have, or another project, is answered 404 as GCE answers a missing resource.

    def quota_routes(self, method: str, path: str) -> tuple[int, dict] | None:
        if method != "GET":
            return None
        if match := re.fullmatch(r"/projects/([^/]+)/regions/([^/]+)", path):
            project, region = match.groups()
            if project != self.project or region not in self.quotas:
                return not_found(f"projects/{project}/regions/{region}")
            return 200, {
                "kind": "compute#region",
                "name": region,
                "status": "UP",
                "selfLink": f"https://www.googleapis.com/compute/v1/projects/{project}/regions/{region}",
                "quotas": quota_list(self.quotas[region]),
            }
        if match := re.fullmatch(r"/projects/([^/]+)", path):
            if match.group(1) != self.project:
                return not_found(f"projects/{match.group(1)}")
            return 200, {
                "kind": "compute#project",
                "name": self.project,
                "id": "123456789012",
                "quotas": quota_list(self.quotas.get("global", {}), owner=self.project),
            }
        return None


def quota_list(metrics: dict[str, tuple[float, float]], owner: str | None = None) -> list[dict[str, Any]]:
    return [
        {"metric": metric, "limit": float(limit), "usage": float(usage), **({"owner": owner} if owner else {})}
        for metric, (limit, usage) in metrics.items()
    ]


def default_quotas() -> dict[str, dict[str, tuple[float, float]]]:
    """A project that has asked for GPU quota in us-central1 (the kind of limits a granted request gives; a new
    project has GPUS_ALL_REGIONS 0 and no A100s)."""
    return {
        "global": {"GPUS_ALL_REGIONS": (8.0, 0.0), "CPUS_ALL_REGIONS": (200.0, 0.0), "SNAPSHOTS": (5000.0, 0.0)},
        "us-central1": {
            "CPUS": (200.0, 0.0),
            "A2_CPUS": (96.0, 0.0),
            "PREEMPTIBLE_CPUS": (0.0, 0.0),
            "NVIDIA_A100_GPUS": (1.0, 0.0),
            "PREEMPTIBLE_NVIDIA_A100_GPUS": (16.0, 0.0),
            "NVIDIA_L4_GPUS": (8.0, 0.0),
            "PREEMPTIBLE_NVIDIA_L4_GPUS": (8.0, 0.0),
            "NVIDIA_T4_GPUS": (4.0, 0.0),
            "PREEMPTIBLE_NVIDIA_T4_GPUS": (4.0, 0.0),
            "IN_USE_ADDRESSES": (8.0, 0.0),
            "SSD_TOTAL_GB": (2048.0, 0.0),
        },
    }


# -- end of quotas ----------------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    fake: FakeGcp

    def _answer(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else {}
        if self.path.endswith("/wait") and self.fake.drop_waits > 0:
            self.fake.drop_waits -= 1
            self.close_connection = True  # a connection that drops: no status line, no answer
            return
        status, answer = self.fake.handle(method, self.path, body)
        data = json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped waiting (its read timeout): GCP's answer goes nowhere

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Served:
    """A FakeGcp on a free port, in a thread; `with Served() as fake:`."""

    def __init__(self, fake: FakeGcp | None = None) -> None:
        self.fake = fake or FakeGcp()
        handler = type("Handler", (_Handler,), {"fake": self.fake})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.fake.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.stopped = threading.Event()
        self.clock = threading.Thread(target=self._tick, daemon=True)  # GCP's time goes on while nobody asks

    def _tick(self) -> None:
        while not self.stopped.wait(TICK_S):
            self.fake.tick()

    def __enter__(self) -> FakeGcp:
        self.thread.start()
        self.clock.start()
        return self.fake

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()
