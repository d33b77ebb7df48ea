"""GCS with IAM: a layer in front of gcp-storage-emulator that lets a request through only when the bucket's IAM
policy grants its caller the permission the request needs, on the resource GCS checks it against.

gcp-storage-emulator has no IAM: every request is allowed. GCS decides each JSON API request so:
- **which permission** each method needs is on the method's reference page ("Required permissions" / the IAM
  permissions page, https://cloud.google.com/storage/docs/access-control/iam-json): objects.get and media
  downloads need storage.objects.get, objects.list storage.objects.list, objects.insert storage.objects.create
  (and storage.objects.delete as well when it replaces an object: "to overwrite an existing object"),
  objects.delete storage.objects.delete, objects.patch/update storage.objects.update, objects.compose
  storage.objects.create on the destination and storage.objects.get on each source, rewrite/copy
  storage.objects.get on the source and storage.objects.create on the destination, buckets.get
  storage.buckets.get, buckets.getIamPolicy storage.buckets.getIamPolicy;
- **which resource** a permission is checked against (and so what `resource.name`/`resource.type` a condition
  sees): an object method is checked against the object, `projects/_/buckets/B/objects/NAME`
  (storage.googleapis.com/Object); objects.list and every bucket method against the bucket,
  `projects/_/buckets/B` (storage.googleapis.com/Bucket), a list carrying its `prefix` query parameter as the
  API attribute `storage.googleapis.com/objectListPrefix` (https://cloud.google.com/iam/docs/conditions-resource-attributes,
  https://cloud.google.com/iam/docs/conditions-attribute-reference#api-attributes);
- **what a role grants**: the predefined roles' permissions from https://cloud.google.com/storage/docs/access-control/iam-roles
  (ROLES below; a custom role is given with its permission list);
- **uniform bucket-level access**: IAM conditions work only on buckets with it ("Using IAM Conditions on
  buckets", https://cloud.google.com/storage/docs/access-control/using-iam-permissions#conditions), and with it
  ACLs grant nothing; this stand-in models only such buckets and refuses a policy with a condition otherwise;
- **the refusal**: 403 with GCS's JSON error body, word for word: "<member> does not have <permission> access to
  the Google Cloud Storage <bucket|object>. Permission '<permission>' denied on resource (or it may not exist)."

Who calls: GCS knows the caller from its OAuth token; google-cloud-storage sends none when STORAGE_EMULATOR_HOST
is set (it uses anonymous credentials against an emulator). So each identity gets a port of its own, as each VM
gets its token from its own metadata server: a process with STORAGE_EMULATOR_HOST=`iam.url(member)` acts as that
member. Project-level methods (buckets.list, buckets.create) are refused, since a bucket's policy cannot grant
them; a method or path this stand-in does not know is answered 501 and recorded in `unknown`, never let through.
"""

from __future__ import annotations

import http.client
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from tests.gcp.iam_conditions import BUCKET_TYPE, LIST_PREFIX, OBJECT_TYPE, Condition, Request, UnsupportedCondition

_VIEWER = frozenset(
    {
        "storage.objects.get",
        "storage.objects.list",
        "storage.folders.get",
        "storage.folders.list",
        "storage.managedFolders.get",
        "storage.managedFolders.list",
    }
)
_CREATOR = frozenset(
    {
        "storage.objects.create",
        "storage.folders.create",
        "storage.managedFolders.create",
        "storage.multipartUploads.create",
        "storage.multipartUploads.abort",
        "storage.multipartUploads.listParts",
    }
)
_MULTIPART = frozenset(f"storage.multipartUploads.{v}" for v in ("create", "abort", "list", "listParts"))
_FOLDERS = frozenset(f"storage.folders.{v}" for v in ("create", "delete", "get", "list", "rename"))
_USER = (
    _VIEWER
    | _CREATOR
    | _MULTIPART
    | _FOLDERS
    | {
        "storage.objects.delete",
        "storage.objects.restore",
        "storage.objects.update",
        "storage.managedFolders.delete",
    }
)
_OBJECT_ADMIN = _USER | {
    "storage.objects.getIamPolicy",
    "storage.objects.setIamPolicy",
    "storage.objects.setRetention",
    "storage.objects.overrideUnlockedRetention",
    "storage.managedFolders.getIamPolicy",
    "storage.managedFolders.setIamPolicy",
}
_BUCKETS = frozenset(
    f"storage.buckets.{v}"
    for v in ("create", "delete", "get", "getIamPolicy", "list", "setIamPolicy", "update", "enableObjectRetention")
)
# The storage permissions of the predefined roles (https://cloud.google.com/storage/docs/access-control/iam-roles;
# their resourcemanager.* and orgpolicy.* permissions concern the project and are left out).
ROLES: dict[str, frozenset[str]] = {
    "roles/storage.objectViewer": _VIEWER,
    "roles/storage.objectCreator": _CREATOR,
    "roles/storage.objectUser": frozenset(_USER),
    "roles/storage.objectAdmin": frozenset(_OBJECT_ADMIN),
    "roles/storage.admin": frozenset(_OBJECT_ADMIN | _BUCKETS),
    "roles/storage.legacyBucketReader": frozenset({"storage.buckets.get", "storage.objects.list"}),
}


class UnknownRole(Exception):
    """A binding names a role whose permissions this stand-in does not know."""


@dataclass(frozen=True)
class Binding:
    role: str
    members: tuple[str, ...]
    condition: Condition | None = None


@dataclass
class BucketPolicy:
    """One bucket's IAM policy, with uniform bucket-level access on (the only kind this stand-in models)."""

    bucket: str
    bindings: list[Binding]
    custom_roles: dict[str, frozenset[str]] = field(default_factory=dict)
    uniform_access: bool = True

    def __post_init__(self) -> None:
        if any(b.condition for b in self.bindings) and not self.uniform_access:
            raise UnsupportedCondition(
                f"gs://{self.bucket}: IAM Conditions can be used only on buckets with uniform bucket-level access"
            )
        for binding in self.bindings:
            self.permissions_of(binding.role)  # an unknown role fails here, not on the first request

    def permissions_of(self, role: str) -> frozenset[str]:
        found = self.custom_roles.get(role, ROLES.get(role))
        if found is None:
            raise UnknownRole(f"the GCS stand-in does not know the role {role!r}: add its permissions to ROLES")
        return found

    def allows(self, member: str, permission: str, request: Request) -> bool:
        """Whether any binding of `member` grants `permission` for `request` (a binding with a condition only when
        the condition holds for it)."""
        for binding in self.bindings:
            if member not in binding.members or permission not in self.permissions_of(binding.role):
                continue
            if binding.condition is None or binding.condition.holds(request):
                return True
        return False


def bucket_resource(bucket: str) -> str:
    return f"projects/_/buckets/{bucket}"


def object_resource(bucket: str, name: str) -> str:
    return f"projects/_/buckets/{bucket}/objects/{name}"


def denied_message(member: str, permission: str, on: str) -> str:
    """GCS's 403 text; `on` is "bucket" or "object" ("project" for project-level methods)."""
    who = member.split(":", 1)[-1]
    whose = "project" if on == "project" else f"Google Cloud Storage {on}"
    return (
        f"{who} does not have {permission} access to the {whose}. Permission '{permission}' denied on resource "
        "(or it may not exist)."
    )


@dataclass(frozen=True)
class Check:
    """One permission a request needs, on one resource."""

    permission: str
    bucket: str
    name: str | None = None  # the object, or None for the bucket itself
    list_prefix: str | None = None

    def request(self) -> Request:
        if self.name is None:
            api = {} if self.list_prefix is None else {LIST_PREFIX: self.list_prefix}
            return Request(bucket_resource(self.bucket), BUCKET_TYPE, api)
        return Request(object_resource(self.bucket, self.name), OBJECT_TYPE)


class Unknown(Exception):
    """A request this stand-in does not know how GCS would check."""


def _segments(path: str) -> list[str]:
    return [unquote(s) for s in path.split("/")]


def checks_for(method: str, path: str, query: dict[str, list[str]], body: bytes) -> list[Check] | str:
    """The permissions a JSON API request needs (a list), or "project" for a project-level method; Unknown when
    this stand-in does not know the request."""
    parts = _segments(path.lstrip("/"))
    api = ("storage", "v1")
    if tuple(parts[:2]) == api and parts[2:3] == ["b"]:
        rest = parts[3:]
        if not rest:
            return "project"  # buckets.list / buckets.insert
        bucket, rest = rest[0], rest[1:]
        if not rest:
            verb = {"GET": "get", "PATCH": "update", "PUT": "update", "DELETE": "delete"}.get(method)
            if verb:
                return [Check(f"storage.buckets.{verb}", bucket)]
        elif rest == ["iam"]:
            verb = {"GET": "getIamPolicy", "PUT": "setIamPolicy"}.get(method)
            if verb:
                return [Check(f"storage.buckets.{verb}", bucket)]
        elif rest == ["o"] and method == "GET":
            return [Check("storage.objects.list", bucket, list_prefix=query.get("prefix", [""])[0])]
        elif rest[0] == "o" and len(rest) >= 2:
            return _object_checks(method, bucket, rest[1:], body)
    elif tuple(parts[:3]) == ("download", *api) and parts[3:4] == ["b"] and len(parts) >= 7 and parts[5] == "o":
        if method == "GET":
            return [Check("storage.objects.get", parts[4], "/".join(parts[6:]))]
    elif (
        tuple(parts[:3]) == ("upload", *api)
        and parts[3:4] == ["b"]
        and parts[5:] == ["o"]
        and method in ("POST", "PUT")
    ):
        name = _upload_name(query, body)
        return [Check("storage.objects.create", parts[4], name)] if name is not None else []
    raise Unknown(f"{method} /{path}")


def _object_checks(method: str, bucket: str, rest: list[str], body: bytes) -> list[Check]:
    """Checks of /storage/v1/b/BUCKET/o/<rest>: an object's own methods, compose, rewriteTo and copyTo."""
    joined = "/".join(rest)
    for verb in ("rewriteTo", "copyTo"):
        if f"/{verb}/b/" in joined and method == "POST":
            source, _, target = joined.partition(f"/{verb}/b/")
            target_bucket, _, target_name = target.partition("/o/")
            return [
                Check("storage.objects.get", bucket, source),
                Check("storage.objects.create", target_bucket, target_name),
            ]
    if joined.endswith("/compose") and method == "POST":
        target = joined.removesuffix("/compose")
        sources = [s["name"] for s in json.loads(body or b"{}").get("sourceObjects", [])]
        return [Check("storage.objects.create", bucket, target)] + [
            Check("storage.objects.get", bucket, s) for s in sources
        ]
    verb = {"GET": "get", "DELETE": "delete", "PATCH": "update", "PUT": "update"}.get(method)
    if verb is None:
        raise Unknown(f"{method} on object {joined}")
    return [Check(f"storage.objects.{verb}", bucket, joined)]


def _upload_name(query: dict[str, list[str]], body: bytes) -> str | None:
    """The object an upload creates: the `name` parameter, else the metadata (JSON, or the first part of a
    multipart/related body); None for the later requests of a resumable upload (`upload_id`), checked when it
    began."""
    if "upload_id" in query:
        return None
    if "name" in query:
        return query["name"][0]
    text = body.lstrip()
    if text.startswith(b"{"):
        return str(json.loads(text)["name"])
    if text.startswith(b"--"):
        boundary = text.split(b"\r\n", 1)[0]
        first = text.split(boundary)[1]
        return str(json.loads(first.split(b"\r\n\r\n", 1)[1].strip())["name"])
    raise Unknown("an upload that names no object")


class GcsIam:
    """The stand-in: one port per member (see the module docstring), each forwarding what the policies allow to
    gcp-storage-emulator at `emulator`. `denied` records each refusal (member, permission, resource)."""

    def __init__(self, emulator: str, policies: list[BucketPolicy]) -> None:
        self.emulator = urlsplit(emulator)
        self.policies = {p.bucket: p for p in policies}
        self.denied: list[tuple[str, str, str]] = []
        self.unknown: list[str] = []
        self._uploads: dict[str, str] = {}  # resumable upload id -> the member who began it
        self._servers: dict[str, ThreadingHTTPServer] = {}

    def url(self, member: str) -> str:
        """The endpoint that acts as `member` (started on first use)."""
        if member not in self._servers:
            server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, member))
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self._servers[member] = server
        return f"http://127.0.0.1:{self._servers[member].server_address[1]}"

    def close(self) -> None:
        for server in self._servers.values():
            server.shutdown()
            server.server_close()

    def allowed(self, member: str, check: Check) -> bool:
        policy = self.policies.get(check.bucket)
        return policy is not None and policy.allows(member, check.permission, check.request())

    def exists(self, bucket: str, name: str) -> bool:
        answer = self._forward("GET", f"/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}", {}, b"")
        return answer[0] == 200

    def decide(self, member: str, method: str, target: str, body: bytes) -> tuple[int, str] | None:
        """None when the request may go on; else the status and message GCS would answer."""
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        try:
            checks = checks_for(method, parts.path, query, body)
        except Unknown as exc:
            self.unknown.append(str(exc))
            return 501, f"the GCS stand-in does not know how GCS checks {exc}"
        if checks == "project":
            permission = "storage.buckets.list" if method == "GET" else "storage.buckets.create"
            self.denied.append((member, permission, "project"))
            return 403, denied_message(member, permission, "project")
        upload_id = query.get("upload_id", [None])[0]
        if upload_id is not None and not checks:
            return None if self._uploads.get(upload_id) == member else (403, "unknown resumable upload session")
        creates = [c for c in checks if c.permission == "storage.objects.create" and c.name]
        checks = checks + [
            Check("storage.objects.delete", c.bucket, c.name) for c in creates if self.exists(c.bucket, c.name or "")
        ]
        for check in checks:
            if not self.allowed(member, check):
                on = "bucket" if check.name is None else "object"
                self.denied.append((member, check.permission, f"{check.request().resource_name} ({method} {target})"))
                return 403, denied_message(member, check.permission, on)
        return None

    def began_upload(self, member: str, location: str) -> None:
        for upload_id in parse_qs(urlsplit(location).query).get("upload_id", []):
            self._uploads[upload_id] = member

    def _forward(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(self.emulator.hostname, self.emulator.port, timeout=60)
        try:
            connection.request(method, target, body=body or None, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()


def _handler(iam: GcsIam, member: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                refused = iam.decide(member, self.command, self.path, body)
            except UnsupportedCondition as exc:  # loudly: a 500 naming the condition, never an allow
                iam.unknown.append(str(exc))
                refused = (500, str(exc))
            if refused is not None:
                self._error(*refused)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "content-length")}
            status, answer_headers, answer = iam._forward(self.command, self.path, headers, body)
            if "uploadType=resumable" in self.path:
                iam.began_upload(member, dict(answer_headers).get("Location", ""))
            self.send_response(status)
            for name, value in answer_headers:
                if name.lower() not in ("connection", "content-length", "transfer-encoding", "server", "date"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def _error(self, code: int, message: str) -> None:
            reason = {403: "forbidden", 501: "notImplemented"}.get(code, "backendError")
            error = {
                "code": code,
                "message": message,
                "errors": [{"message": message, "domain": "global", "reason": reason}],
            }
            data = json.dumps({"error": error}).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _any

        def log_message(self, *args: object) -> None:
            pass

    return Handler


# -- the policies, from the Pulumi program's mocked run -------------------------------------------------------------
BUCKET_RESOURCE = "gcp:storage/bucket:Bucket"
MEMBER_RESOURCE = "gcp:storage/bucketIAMMember:BucketIAMMember"


def policy_from_program(run: Any) -> BucketPolicy:
    """The artifact bucket's policy as the program declares it (tests.infra.program.ProgramRun): every
    BucketIAMMember's role, member and condition expression, and the bucket's uniform access."""
    bucket = run.one(BUCKET_RESOURCE).inputs
    bindings = []
    for grant in run.of_type(MEMBER_RESOURCE):
        inputs = grant.inputs
        assert inputs["bucket"] == bucket["name"], f"{grant.name} is on another bucket: {inputs['bucket']}"
        condition = inputs.get("condition")
        parsed = Condition.parse(condition["expression"]) if condition else None
        bindings.append(Binding(inputs["role"], (inputs["member"],), parsed))
    return BucketPolicy(bucket["name"], bindings, uniform_access=bool(bucket.get("uniformBucketLevelAccess")))


def member_with(policy: BucketPolicy, role: str) -> str:
    """The one member the policy grants `role` (the program's tracker or worker account)."""
    found = [m for b in policy.bindings if b.role == role for m in b.members]
    assert len(found) == 1, f"expected one member with {role}, found {found}"
    return found[0]
