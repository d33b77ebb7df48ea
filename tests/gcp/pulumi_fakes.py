"""Stand-ins for what cannot run here: the Pulumi CLI (a script that logs how the Automation API calls it and
answers with real engine texts and events) and the diy backend's files. The code under test is real: the
Automation API, lab's seam, state reader, locks and flows.

Each stand-in follows Pulumi's source (github.com/pulumi/pulumi, file@commit):
- backend layout: pkg/backend/diy/store.go@62950741 (projectReferenceStore: `.pulumi/stacks/<project>/<stack>.json`,
  legacyReferenceStore: `.pulumi/stacks/<stack>.json`), meta.go@fdb4a02e (`.pulumi/meta.yaml`, `version: 1` for a
  new backend), state.go@05a64e35 (.json/.json.gz/.json.zst, the newest wins; compression told by content);
- locks: lock.go@1e5fa8de (`.pulumi/locks/` + stackLockDir(FullyQualifiedName()) + `/<uuid>.json`, content
  lockContent {pid, username, hostname, timestamp}), backend.go@002d8492 (FullyQualifiedName is
  `organization/<project>/<stack>`, or the bare stack name in the legacy layout);
- checkpoint: sdk/go/common/apitype/core.go@0061b232 (CheckpointV3, DeploymentV3, ResourceV3 with `delete`,
  `pendingReplacement`, `external`; pending_operations of OperationV2 {resource, type});
- engine events: sdk/go/common/apitype/events.go@0accfeec (EngineEvent, ResourcePreEvent, StepEventMetadata,
  SummaryEvent), pkg/resource/deploy/step.go@004205f2 (the op values), proto/pulumi/events.proto@212b4a61 (the
  Automation API gives a CLI newer than 3.205.0 `--event-log tcp://HOST:PORT`, a pulumirpc.Events server that takes a
  stream of EventRequest{string event = 1}; older CLIs get a file of JSON lines: automation/_stack.py
  _setup_event_log, installed in .venv);
- failures: pkg/backend/display/progress.go (the `Diagnostics:` section: "  <type> (<name>):", each line of a
  diagnostic indented by four spaces, a blank line after each resource), around the real GCP texts kept in
  tests/data/gcp_errors (SOURCES.md).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import stat
import sys
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

GCP_STACK = {
    "gcp:project": "my-gcp-project",
    "gcp:region": "us-central1",
    "gcp:zone": "us-central1-a",
    "lab:allowedSshCidrs": ["203.0.113.0/24"],
}
GCP_ERRORS = Path(__file__).resolve().parents[1] / "data" / "gcp_errors"
PROVIDER_URN = "urn:pulumi:{stack}::lab::pulumi:providers:gcp::default_8_30_0"
PROVIDER_ID = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"


def gcp_settings(**extra: Any) -> Any:
    """A valid gcp stack's settings (stack dev): GCP_STACK with `extra` keys on top."""
    from toolkit.config import schema

    resolved = schema.resolve({**GCP_STACK, **extra}, stack="dev")
    assert resolved.problems == [], resolved.problems
    return resolved.settings


FAKE_CLI = r"""#!{python}
import json, os, sys
argv = sys.argv[1:]
with open({log!r}, "a") as log:
    names = ("PULUMI_BACKEND_URL", "LAB_WORKER_ZONE", "LAB_WORKER_ON_DEMAND", "PULUMI_PYTHON_CMD")
    told = open(argv[argv.index("--file") + 1]).read() if "--file" in argv else None  # an import's file
    entry = {{"argv": argv, "env": {{k: os.environ.get(k) for k in names}}, "cwd": os.getcwd(), "file": told}}
    log.write(json.dumps(entry) + "\n")
behaviour = json.loads(open({behaviour!r}).read() or "{{}}")
if argv[:1] == ["version"]:
    print(behaviour.get("version", "v3.272.0"))
    sys.exit(0)
verb = next((a for a in argv if not a.startswith("-")), "")


def varint(n):
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def send(target, events):
    lines = [json.dumps(event) for event in events]
    if target.startswith("tcp://"):
        # pulumirpc.Events/StreamEvents: a stream of EventRequest{{string event = 1}} (tag 0x0A, length, bytes).
        import grpc

        def encode(text):
            data = text.encode()
            return b"\x0a" + varint(len(data)) + data

        with grpc.insecure_channel(target[len("tcp://"):]) as channel:
            stream = channel.stream_unary(
                "/pulumirpc.Events/StreamEvents", request_serializer=encode, response_deserializer=lambda b: b
            )
            stream(iter(lines), timeout=30)
    else:
        with open(target, "a") as events_file:
            events_file.write("".join(line + "\n" for line in lines))


if "--event-log" in argv:
    default = [{{"sequence": 0, "timestamp": 0, "summaryEvent": {{"maybeCorrupt": False, "durationSeconds": 0,
               "resourceChanges": {{}}, "PolicyPacks": {{}}}}}}, {{"sequence": 1, "timestamp": 0, "cancelEvent": {{}}}}]
    send(argv[argv.index("--event-log") + 1], behaviour.get("events", {{}}).get(verb, default))
# The Automation API runs the CLI in the project's folder: infra/persistent/ for the lab's persistent stack. Answers
# told for a verb are the lab stack's; "persistent <verb>" ones the persistent stack's.
persistent = os.getcwd().endswith(os.path.join("infra", "persistent"))
answers = behaviour.get("answers", {{}})
answer = answers.get("persistent " + verb) if persistent else answers.get(verb)
if answer is not None:
    sys.stdout.write(answer.get("stdout", ""))
    sys.stderr.write(answer.get("stderr", ""))
    sys.exit(answer.get("code", 0))
if "output" in argv:
    print("{{}}")
if "history" in argv:
    entry = {{"kind": "update", "startTime": "2026-11-22T08:00:00.000Z", "endTime": "2026-11-22T08:01:00.000Z",
             "message": "", "environment": {{}}, "config": {{}}, "result": "succeeded", "version": 1,
             "resourceChanges": {{"create": 1}}}}
    print(json.dumps([entry]))
sys.exit(0)
"""

# A Go program that panics exits 2 and prints the panic and its goroutines on stderr.
CRASHING_CLI = """#!/bin/sh
echo 'panic: runtime error: invalid memory address or nil pointer dereference' >&2
echo '[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x1b3c2f4]' >&2
exit 2
"""
GARBAGE_CLI = """#!/bin/sh
echo '<html><head><title>404 Not Found</title></head></html>'
"""


class FakeCli:
    """A `pulumi` executable at LAB_HOME/pulumi-cli/bin (where `lab doctor --install-pulumi` puts it)."""

    def __init__(self, lab_home: Path) -> None:
        self.bin = lab_home / "pulumi-cli" / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.path = self.bin / "pulumi"
        self.log = lab_home / "fake-pulumi.log"
        self.behaviour = lab_home / "fake-pulumi.json"
        self.behaviour.write_text("{}")
        self.path.write_text(FAKE_CLI.format(python=sys.executable, log=str(self.log), behaviour=str(self.behaviour)))
        self.path.chmod(self.path.stat().st_mode | stat.S_IXUSR)

    def _update(self, section: str, verb: str, value: Any) -> None:
        current = json.loads(self.behaviour.read_text())
        current.setdefault(section, {})[verb] = value
        self.behaviour.write_text(json.dumps(current))

    def answer(self, verb: str, *, stdout: str = "", stderr: str = "", code: int = 0) -> None:
        """What `pulumi <verb>` prints and how it exits, for the lab's stack ("persistent <verb>": for the
        persistent stack's)."""
        self._update("answers", verb, {"stdout": stdout, "stderr": stderr, "code": code})

    def reports_version(self, version: str) -> None:
        """What `pulumi version` prints (v3.272.0 unless told): the Automation API sends events over gRPC to a
        CLI newer than 3.205, and through a file to an older one (automation/_stack.py _setup_event_log)."""
        current = json.loads(self.behaviour.read_text())
        current["version"] = version
        self.behaviour.write_text(json.dumps(current))

    def events(self, verb: str, events: list[dict[str, Any]]) -> None:
        """The engine events `pulumi <verb>` sends to the Automation API's --event-log."""
        self._update("events", verb, events)

    def breaks(self, how: str) -> None:
        """Replace the CLI with a broken one: crash, garbage, not-executable or not-a-program."""
        if how == "crash":
            self.path.write_text(CRASHING_CLI)
        elif how == "garbage":
            self.path.write_text(GARBAGE_CLI)
        elif how == "not-a-program":
            self.path.write_bytes(b"\x00\x01\x02 not an executable format \xff\xfe")
        elif how != "not-executable":
            raise ValueError(how)
        mode = self.path.stat().st_mode
        self.path.chmod(mode & ~0o111 if how == "not-executable" else mode | stat.S_IXUSR)

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def path_without_pulumi() -> str:
    """PATH with every folder holding a real `pulumi` left out, so the fake is the one found."""
    return os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep) if not (Path(d) / "pulumi").exists())


# -- engine events and texts ---------------------------------------------------------------------------------


def urn(stack: str, kind: str, name: str, parent_type: str | None = None) -> str:
    qualified = f"{parent_type}${kind}" if parent_type else kind
    return f"urn:pulumi:{stack}::lab::{qualified}::{name}"


def step_event(
    sequence: int, op: str, kind: str, name: str, *, stack: str = "dev", parent_type: str | None = None
) -> dict[str, Any]:
    """A resourcePreEvent as the engine sends it during a preview (apitype ResourcePreEvent, `planning` set)."""
    resource_urn = urn(stack, kind, name, parent_type)
    state = {
        "type": kind,
        "urn": resource_urn,
        "custom": not kind.startswith(("lab:", "pulumi:pulumi:")),
        "id": "",
        "parent": urn(stack, "pulumi:pulumi:Stack", f"lab-{stack}"),
        "inputs": {},
        "outputs": {},
        "provider": f"{PROVIDER_URN.format(stack=stack)}::{PROVIDER_ID}",
    }
    old = None if op == "create" else {**state, "id": f"projects/my-gcp-project/zones/us-central1-a/x/{name}"}
    new = None if op in ("delete", "delete-replaced") else state
    metadata: dict[str, Any] = {
        "op": op,
        "urn": resource_urn,
        "type": kind,
        "old": old,
        "new": new,
        "detailedDiff": None,
        "provider": state["provider"],
    }
    if op in ("replace", "create-replacement", "delete-replaced"):
        metadata["keys"] = ["machineType"]
        metadata["diffs"] = ["machineType"]
        metadata["detailedDiff"] = {"machineType": {"diffKind": "update-replace", "inputDiff": True}}
    if op in ("same", "create", "update", "delete", "replace", "read", "import"):
        metadata["logical"] = True
    return {
        "sequence": sequence,
        "timestamp": 1795000000 + sequence,
        "resourcePreEvent": {"metadata": metadata, "planning": True},
    }


def preview_events(steps: Iterable[tuple[str, str, str]], changes: dict[str, int]) -> list[dict[str, Any]]:
    """A preview's events: prelude, a resourcePreEvent per (op, type, name), the summary, the cancel event."""
    events: list[dict[str, Any]] = [{"sequence": 0, "timestamp": 1795000000, "preludeEvent": {"config": {}}}]
    for op, kind, name in steps:
        parent = "lab:infra:WorkerPool" if name.startswith("worker-") else None
        events.append(step_event(len(events), op, kind, name, parent_type=parent))
    summary = {
        "maybeCorrupt": False,
        "durationSeconds": 4,
        "resourceChanges": changes,
        "PolicyPacks": {},
        "isPreview": True,
    }
    events.append({"sequence": len(events), "timestamp": 1795000010, "summaryEvent": summary})
    events.append({"sequence": len(events), "timestamp": 1795000010, "cancelEvent": {}})
    return events


def gcp_error(name: str) -> str:
    return (GCP_ERRORS / name).read_text(encoding="utf-8")


def failed_update(diagnostics: str, stack: str = "dev") -> str:
    """The stdout of a `pulumi up` that failed: the header, the Diagnostics section, the summary."""
    return f"Updating ({stack}):\n\n{diagnostics.rstrip()}\n\nResources:\n    7 unchanged\n\nDuration: 2m11s\n"


def diagnostics(kind: str, name: str, error: str, stack: str = "dev") -> str:
    """The Diagnostics section of a failed update, as progress.go lays it out: the resource's error (the GCP
    provider's `1 error occurred:` list), then the stack's own `error: update failed`."""
    lines = ["Diagnostics:", f"  {kind} ({name}):", "    error: 1 error occurred:"]
    lines += [f"    \t{line if line.startswith('* ') else '* ' + line}" for line in error.strip().splitlines()]
    lines += ["", f"  pulumi:pulumi:Stack (lab-{stack}):", "    error: update failed", ""]
    return "\n".join(lines)


# -- the diy backend's files ---------------------------------------------------------------------------------


def write_meta(backend: Path, version: int = 1) -> None:
    """`.pulumi/meta.yaml`, which the diy backend writes into a new backend (meta.go ensurePulumiMeta)."""
    path = backend / ".pulumi" / "meta.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"version: {version}\n")


def write_checkpoint(
    backend: Path,
    stack: str,
    outputs: dict[str, Any],
    resources: list[tuple[str, str]],
    *,
    deleted: list[tuple[str, str]] = (),  # type: ignore[assignment]
    pending: list[tuple[str, str, str]] = (),  # type: ignore[assignment]
    compression: str | None = None,
    legacy: bool = False,
    project: str = "lab",
) -> Path:
    """A diy backend's checkpoint for `stack` of project lab: the stack resource with `outputs`, the default gcp
    provider, `resources` as (type, name) (components, whose type is lab:..., are not custom), `deleted` as
    (type, name) marked `delete: true` (replaced, still there), and `pending` as (operation type, type, name) in
    pending_operations. `compression`: None, "gzip" or "zstd" (.json, .json.gz, .json.zst). `project`: lab, or
    lab-persistent for the lab's persistent stack."""
    stack_urn = urn(stack, "pulumi:pulumi:Stack", f"lab-{stack}")
    provider = f"{PROVIDER_URN.format(stack=stack)}::{PROVIDER_ID}"

    def entry(kind: str, name: str, **extra: Any) -> dict[str, Any]:
        custom = not kind.startswith("lab:")
        found: dict[str, Any] = {"urn": urn(stack, kind, name), "custom": custom, "type": kind}
        if custom:
            found.update(id=f"projects/my-gcp-project/zones/us-central1-a/{name}", provider=provider)
        found.update(inputs={"name": name}, outputs={"name": name}, parent=stack_urn, **extra)
        return found

    entries: list[dict[str, Any]] = [
        {"urn": stack_urn, "custom": False, "type": "pulumi:pulumi:Stack", "outputs": outputs},
        {
            "urn": PROVIDER_URN.format(stack=stack),
            "custom": True,
            "id": PROVIDER_ID,
            "type": "pulumi:providers:gcp",
            "inputs": {"project": "my-gcp-project", "version": "8.30.0"},
            "outputs": {"project": "my-gcp-project", "version": "8.30.0"},
        },
    ]
    entries += [entry(kind, name, delete=True) for kind, name in deleted]
    entries += [entry(kind, name) for kind, name in resources]
    latest: dict[str, Any] = {
        "manifest": {"time": "2026-11-22T08:01:00.000000000Z", "magic": "0" * 64, "version": "v3.272.0"},
        "secrets_providers": {"type": "passphrase", "state": {"salt": "v1:ZWhBMnM0TWpkTUU9:v1:abc:def"}},
        "resources": entries,
    }
    if pending:
        latest["pending_operations"] = [
            {
                "resource": {"urn": urn(stack, kind, name), "custom": True, "type": kind, "inputs": {"name": name}},
                "type": operation,
            }
            for operation, kind, name in pending
        ]
    document = {"version": 3, "checkpoint": {"stack": f"organization/{project}/{stack}", "latest": latest}}
    raw = json.dumps(document).encode()
    suffix = {None: ".json", "gzip": ".json.gz", "zstd": ".json.zst"}[compression]
    if compression == "gzip":
        raw = gzip.compress(raw)
    elif compression == "zstd":
        import zstandard

        raw = zstandard.ZstdCompressor().compress(raw)
    if legacy:
        path = backend / ".pulumi" / "stacks" / f"{stack}{suffix}"
    else:
        write_meta(backend)
        path = backend / ".pulumi" / "stacks" / project / f"{stack}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return path


def write_lock(
    backend: Path, stack: str, who: str = "ci", host: str = "runner-7", pid: int = 4242, *, legacy: bool = False
) -> Path:
    """A lock as a running `pulumi up` elsewhere holds it: .pulumi/locks/organization/lab/<stack>/<uuid>.json
    (the legacy layout: .pulumi/locks/<stack>/<uuid>.json), with lock.go's lockContent; Go writes a time.Time
    as RFC 3339 with nanoseconds."""
    folder = Path(stack) if legacy else Path("organization") / "lab" / stack
    path = backend / ".pulumi" / "locks" / folder / "2c9d5a41-7f0e-4b8a-9c1d-3e5f6a7b8c9d.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {"pid": pid, "username": who, "hostname": host, "timestamp": "2026-11-22T03:00:00.123456789Z"}
    path.write_text(json.dumps(content))
    return path


# -- Pulumi's imports, strictly: the engine and pulumi-gcp as they take a resource into a state -------------------

# The engine's own words when a program's `import` option meets a resource whose inputs, as the provider reads
# them, differ from the program's (pulumi/pulumi pkg/resource/deploy/step.go@004205f2 ImportStep.Apply:
# `fmt.Sprintf("inputs to import do not match the existing resource: %v", s.diffs)`, an error in an update and
# a warning "...; importing this resource will fail" in a preview). pulumi/pulumi-gcp#3044 shows it for a resource
# Pulumi made, dropped from the state and imported back: `error: inputs to import do not match the existing
# resource: [pulumiLabels]`.
IMPORT_MISMATCH = "inputs to import do not match the existing resource"
# pulumi-gcp's attribution label (GCP 8.0 migration guide, "Default label": added to every resource it creates,
# written to pulumiLabels and effectiveLabels, not managed in `labels`; `gcp:addPulumiAttributionLabel: false` opts
# out; pulumi/pulumi-gcp#3933 renames upstream's goog-terraform-provisioned). Upstream applies it at creation only
# (terraform-provider-google 6.0 upgrade guide: attribution_label_application_strategy CREATION_ONLY).
ATTRIBUTION_LABEL = ("goog-pulumi-provisioned", "true")
BUCKET = "gcp:storage/bucket:Bucket"
BUCKET_MEMBER = "gcp:storage/bucketIAMMember:BucketIAMMember"
INSTANCE = "gcp:compute/instance:Instance"
CONFLICT_409 = (
    "googleapi: Error 409: Your previous request to create the named bucket succeeded and you already own it., conflict"
)


class GcpLabels:
    """How pulumi-gcp plans and reads a resource's labels, by major version.

    - planned (Check/Diff of the program's inputs): `pulumiLabels` is `labels` plus the provider's default labels,
      and the attribution label only when the resource is created (CREATION_ONLY, above).
    - read for an import: in 7.x-8.x a storage bucket's import fills `labels` (without the attribution label, which
      is not managed in `labels`) and `pulumiLabels` with every label the bucket has (patch 0009, pulumi/pulumi-gcp
      PR #1946); 9.0 dropped that patch (pulumi/pulumi-gcp#1961, #3313: imports fill only the output-only
      `effectiveLabels`); 10.x is taken to read as 9.x does (its migration guide was not found in the sources
      reachable here; the persistent stack's tests pass whatever an import reads, since nothing is imported).
    """

    def __init__(self, major: int = 10, attribution: bool = True) -> None:
        self.major, self.attribution = major, attribution

    def planned(self, inputs: dict[str, Any], *, creating: bool) -> dict[str, Any]:
        labels = dict(inputs.get("labels") or {})
        pulumi_labels = dict(labels)
        if creating and self.attribution and self.major >= 8:
            pulumi_labels[ATTRIBUTION_LABEL[0]] = ATTRIBUTION_LABEL[1]
        return {**inputs, "labels": labels, "pulumiLabels": pulumi_labels}

    def read(self, recorded: dict[str, Any], cloud_labels: dict[str, str]) -> dict[str, Any]:
        """The inputs the provider's Read hands the engine for an import: what was recorded at create, the labels
        as this version reads them."""
        inputs = {key: value for key, value in recorded.items() if key not in ("labels", "pulumiLabels")}
        if self.major <= 8:
            inputs["labels"] = {k: v for k, v in cloud_labels.items() if k != ATTRIBUTION_LABEL[0]}
            inputs["pulumiLabels"] = dict(cloud_labels)
        else:
            inputs["labels"], inputs["pulumiLabels"] = {}, {}
        return inputs


def iam_binding(inputs: dict[str, Any]) -> Any:
    """A BucketIAMMember's inputs as the binding GCS evaluates (tests/gcp/gcs_iam.py)."""
    from tests.gcp.gcs_iam import Binding
    from tests.gcp.iam_conditions import Condition

    condition = inputs.get("condition")
    return Binding(inputs["role"], (inputs["member"],), Condition.parse(condition["expression"]) if condition else None)


def import_file_problems(specs: list[dict[str, Any]]) -> list[str]:
    """What `pulumi import --file` says of an import file's resources before it imports anything, in its words
    (pulumi/pulumi pkg/cmd/pulumi/operations/import.go parseImportFile, v3.150.0 and 1b594989)."""
    problems: list[str] = []
    names = {spec.get("name") or spec.get("logicalName") for spec in specs}
    for spec in specs:
        name = spec.get("name") or spec.get("logicalName") or ""
        what = f"resource '{name}'" + (f" of type '{spec['type']}'" if spec.get("type") else "")
        if not spec.get("type"):
            problems.append(f"{what} has no type")
        if not name:
            problems.append(f"{what} has no name")
        if not spec.get("component") and not spec.get("id"):
            problems.append(f"{what} has no ID")
        if spec.get("component") and spec.get("id"):
            problems.append(f"{what} has an ID, but is marked as a component")
        if spec.get("parent") and spec["parent"] not in names:
            problems.append(f"the parent '{spec['parent']}' for {what} has no entry in 'nameTable'")
    return problems


class StrictPulumi:
    """`lab`'s Engine as the Pulumi engine with pulumi-gcp would answer it, for one project's stack: the real program
    (infra/, or infra/persistent/ for project lab-persistent) runs under Pulumi's mocks (tests/infra/program.py), with
    the run's choices in its environment, and its registrations are stepped as the engine steps them
    (step_generator.go): in the state -> same/update; `import` option -> ImportStep (the resource must exist; its
    inputs as pulumi-gcp reads them must equal the program's, GcpLabels, else IMPORT_MISMATCH); else create (a bucket
    whose name GCS already holds: GCS's 409). Resources the program no longer registers are deleted, or only dropped
    from the state when they were retainOnDelete. `adopt` is `pulumi import --file`: the read inputs go into the state
    as they are, compared with nothing (ImportStep.Apply's `planned` branch). Buckets are real, in
    gcp-storage-emulator (labels and objects); the state is the diy backend's checkpoint that lab's reader reads.

    `backend`: a folder, or "gs://BUCKET": then the checkpoint and the update's lock file (lock.go: taken before the
    update, removed after it, failed or not) are written through google-cloud-storage as whoever this process acts as
    then (STORAGE_EMULATOR_HOST, e.g. a port of tests/gcp/gcs_iam.py: the CI runner's `lab down` writes the state with
    its own grants). What the engine makes in GCP follows it, when given: `compute` (tests/gcp/fake_gcp_api.py's
    FakeGcp) gets the VMs it creates and loses the ones it deletes; `iam` (gcs_iam.GcsIam) gets the bucket bindings
    (BucketIAMMember) it creates and loses the ones it deletes, so GCS decides each request on what was applied."""

    def __init__(
        self,
        backend: Path | str,
        gcs: Any,
        config: dict[str, Any],
        *,
        labels: GcpLabels | None = None,
        project: str = "lab",
        stack: str = "dev",
        calls: list[str] | None = None,
        compute: Any = None,
        iam: Any = None,
    ) -> None:
        self.backend, self.gcs, self.config, self.project, self.stack = backend, gcs, config, project, stack
        self.labels = labels or GcpLabels()
        self.compute, self.iam = compute, iam
        self.calls = calls if calls is not None else []
        self.recorded: dict[str, dict[str, Any]] = {}  # what each bucket was created with, by bucket name

    def persistent(self) -> StrictPulumi:
        twin = StrictPulumi(
            self.backend,
            self.gcs,
            self.config,
            labels=self.labels,
            project="lab-persistent",
            stack=self.stack,
            calls=self.calls,
            compute=self.compute,
            iam=self.iam,
        )
        twin.recorded = self.recorded
        return twin

    # -- the state ----------------------------------------------------------------------------------------------
    @property
    def _relative(self) -> str:
        return f".pulumi/stacks/{self.project}/{self.stack}.json"

    def _bucket(self) -> Any:
        """The state bucket, as whoever this process acts as now (a gs:// backend)."""
        from google.cloud import storage

        client = storage.Client(project=str(self.config.get("gcp:project", "my-gcp-project")))
        return client.bucket(str(self.backend).removeprefix("gs://").split("/", 1)[0])

    def _read(self, relative: str) -> str | None:
        if isinstance(self.backend, Path):
            path = self.backend / relative
            return path.read_text() if path.exists() else None
        from google.api_core import exceptions

        try:
            return self._bucket().blob(relative).download_as_text()
        except exceptions.NotFound:
            return None

    def _write(self, relative: str, text: str) -> None:
        if isinstance(self.backend, Path):
            path = self.backend / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        else:
            self._bucket().blob(relative).upload_from_string(text)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The diy backend's lock for an update (lock.go: `.pulumi/locks/organization/<project>/<stack>/<uuid>.json`,
        removed when the update ends, however it ends); in a gs:// backend only (a folder's tests read its files)."""
        if isinstance(self.backend, Path):
            yield
            return
        relative = f".pulumi/locks/organization/{self.project}/{self.stack}/{uuid.uuid4()}.json"
        content = {"pid": os.getpid(), "username": "lab", "hostname": "test", "timestamp": "2026-12-02T09:00:00Z"}
        self._write(relative, json.dumps(content))
        try:
            yield
        finally:
            self._bucket().blob(relative).delete()

    def _load(self) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        text = self._read(self._relative)
        if text is None:
            return {}, {}
        latest = json.loads(text)["checkpoint"]["latest"]
        resources = {r["urn"]: r for r in latest["resources"] if r["type"] != "pulumi:pulumi:Stack"}
        resources = {urn: r for urn, r in resources.items() if not r["type"].startswith("pulumi:providers:")}
        stack = next(r for r in latest["resources"] if r["type"] == "pulumi:pulumi:Stack")
        return resources, stack.get("outputs") or {}

    def _save(self, resources: dict[str, dict[str, Any]], outputs: dict[str, Any]) -> None:
        if isinstance(self.backend, Path):
            write_meta(self.backend)
        elif self._read(".pulumi/meta.yaml") is None:
            self._write(".pulumi/meta.yaml", "version: 1\n")
        stack_urn = f"urn:pulumi:{self.stack}::{self.project}::pulumi:pulumi:Stack::{self.project}-{self.stack}"
        provider = f"urn:pulumi:{self.stack}::{self.project}::pulumi:providers:gcp::default::{PROVIDER_ID}"
        entries = [{"urn": stack_urn, "custom": False, "type": "pulumi:pulumi:Stack", "outputs": outputs}]
        entries.append(
            {"urn": provider.rsplit("::", 1)[0], "custom": True, "id": PROVIDER_ID, "type": "pulumi:providers:gcp"}
        )
        entries += list(resources.values())
        latest = {"manifest": {"version": "v3.272.0"}, "resources": entries}
        document = {
            "version": 3,
            "checkpoint": {"stack": f"organization/{self.project}/{self.stack}", "latest": latest},
        }
        self._write(self._relative, json.dumps(document))

    def _urn(self, kind: str, name: str, parent: str | None) -> str:
        qualified = kind
        if parent and "::pulumi:pulumi:Stack::" not in parent:
            parent_type = parent.split("::")[2].removeprefix("pulumi:pulumi:Stack$")
            qualified = f"{parent_type}${kind}"
        return f"urn:pulumi:{self.stack}::{self.project}::{qualified}::{name}"

    # -- the engine -----------------------------------------------------------------------------------------------
    def _run(self, choices: Any) -> Any:
        from tests.infra.program import INFRA, run_program

        program = INFRA / "persistent" if self.project == "lab-persistent" else INFRA
        saved = {name: os.environ.get(name) for name in ("LAB_WORKER_ZONE", "LAB_WORKER_ON_DEMAND", "LAB_ADOPT_BUCKET")}
        os.environ.update(choices.env() if choices is not None else {})
        try:
            return run_program(self.config, stack=self.stack, program=program, project=self.project)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def _failed(self, kind: str, name: str, error: str) -> Exception:
        from toolkit.gcp import pulumi_engine

        package, module, name_of_type = kind.split(":")
        display = f"{package}:{module.split('/')[0]}:{name_of_type}"  # as the display shows types: gcp:storage:Bucket
        text = failed_update(
            f"Diagnostics:\n  {display} ({name}):\n    error: {error}\n\n"
            f"  pulumi:pulumi:Stack ({self.project}-{self.stack}):\n    error: update failed\n",
            self.stack,
        )
        return pulumi_engine.EngineFailed(f"Pulumi failed: {pulumi_engine.engine_reason(text)}", text)

    def preview(self, choices: Any, say: Any) -> Any:
        from toolkit.gcp import pulumi_engine

        self.calls.append(f"{self.project}: preview")
        run = self._run(choices)
        resources, _ = self._load()
        creates = [r for r in run.resources if self._urn(r.type, r.name, r.options["parent"]) not in resources]
        steps = [("create", r.type, r.name) for r in creates if not r.type.startswith("lab:")]
        return pulumi_engine.Plan(counts={"create": len(steps)}, steps=steps)

    def up(self, choices: Any, say: Any) -> dict[str, Any]:
        self.calls.append(f"{self.project}: up")
        run = self._run(choices)
        with self._locked():
            return self._update(run)

    def _update(self, run: Any) -> dict[str, Any]:
        resources, _ = self._load()
        registered: dict[str, dict[str, Any]] = {}
        for r in run.resources:
            urn = self._urn(r.type, r.name, r.options["parent"])
            entry = {
                "urn": urn,
                "custom": not r.type.startswith("lab:"),
                "type": r.type,
                "parent": r.options["parent"],
                "retainOnDelete": r.options["retain_on_delete"],
            }
            if entry["custom"]:
                entry["provider"] = (
                    f"urn:pulumi:{self.stack}::{self.project}::pulumi:providers:gcp::default::{PROVIDER_ID}"
                )
            old = resources.get(urn)
            if r.type == BUCKET:
                entry.update(self._bucket_step(r, old))
            else:
                entry.update(id=(old or {}).get("id") or f"{r.name}-id", inputs=r.inputs, outputs=dict(r.inputs))
            if old is None:
                self._made(r.type, r.inputs)
            registered[urn] = entry
            self._save({**resources, **registered}, {})
        for urn, old in resources.items():
            if urn not in registered:
                self._delete(old)
        self._save(registered, run.outputs)
        return run.outputs

    def _bucket_step(self, registration: Any, old: dict[str, Any] | None) -> dict[str, Any]:
        name = registration.inputs["name"]
        bucket = self.gcs.lookup_bucket(name)
        import_id = registration.options["import_id"]
        if old is None and import_id:
            if bucket is None:
                raise self._failed(BUCKET, registration.name, f"resource '{import_id}' does not exist")
            read = self.labels.read(self.recorded.get(name, registration.inputs), dict(bucket.labels or {}))
            planned = self.labels.planned(registration.inputs, creating=False)
            differing = sorted(key for key in set(read) | set(planned) if read.get(key) != planned.get(key))
            if differing:
                raise self._failed(BUCKET, registration.name, f"{IMPORT_MISMATCH}: [{' '.join(differing)}]")
            return {"id": name, "inputs": planned, "outputs": {**planned, "effectiveLabels": dict(bucket.labels)}}
        if old is None:
            if bucket is not None:
                raise self._failed(BUCKET, registration.name, f"1 error occurred:\n\t* {CONFLICT_409}")
            planned = self.labels.planned(registration.inputs, creating=True)
            bucket = self.gcs.create_bucket(name)
            bucket.labels = planned["pulumiLabels"]  # the emulator keeps labels from an update only
            bucket.patch()
            self.recorded[name] = dict(registration.inputs)
            return {"id": name, "inputs": planned, "outputs": {**planned, "effectiveLabels": planned["pulumiLabels"]}}
        if bucket is None:
            raise self._failed(BUCKET, registration.name, f"googleapi: Error 404: bucket {name} not found")
        planned = self.labels.planned(registration.inputs, creating=False)
        bucket.labels = {**(bucket.labels or {}), **planned["pulumiLabels"]}  # an update: labels are not authoritative
        bucket.patch()
        return {"id": name, "inputs": planned, "outputs": {**planned, "effectiveLabels": dict(bucket.labels)}}

    def _made(self, kind: str, inputs: dict[str, Any]) -> None:
        """What a create makes in GCP's other stand-ins: a VM RUNNING in Compute, a binding in the bucket's policy."""
        if kind == INSTANCE and self.compute is not None:
            spot = (inputs.get("scheduling") or {}).get("provisioningModel") == "SPOT"
            self.compute.add(inputs["name"], zone=inputs["zone"], labels=dict(inputs.get("labels") or {}), spot=spot)
        elif kind == BUCKET_MEMBER and self.iam is not None:
            self.iam.policies[inputs["bucket"]].bindings.append(iam_binding(inputs))

    def _gone(self, old: dict[str, Any]) -> None:
        if old.get("retainOnDelete"):
            return
        if old["type"] == INSTANCE and self.compute is not None:
            self.compute.instances.pop(old["inputs"]["name"], None)
        elif old["type"] == BUCKET_MEMBER and self.iam is not None:
            policy = self.iam.policies[old["inputs"]["bucket"]]
            policy.bindings.remove(iam_binding(old["inputs"]))

    def _delete(self, old: dict[str, Any]) -> None:
        self._gone(old)
        if old["type"] != BUCKET or old.get("retainOnDelete"):
            return  # a VM, a grant...: gone; a retained resource: only out of the state
        name = old["id"]
        if self.gcs.lookup_bucket(name) is not None:
            if not old["inputs"].get("forceDestroy") and list(self.gcs.list_blobs(name)):
                raise self._failed(BUCKET, name, f"Error trying to delete bucket {name} containing objects")
            for blob in self.gcs.list_blobs(name):
                blob.delete()
            self.gcs.bucket(name).delete()

    def destroy(self, say: Any, targets: list[str] | None = None) -> None:
        self.calls.append(f"{self.project}: destroy" + (" workers" if targets else ""))
        with self._locked():
            resources, outputs = self._load()
            for urn in list(resources):
                if not targets or urn in targets:
                    self._delete(resources.pop(urn))
            self._save(resources if targets else {}, outputs if targets else {})

    def adopt(self, specs: list[dict[str, Any]], say: Any) -> None:
        """`pulumi import --file`: each resource read and recorded as it is (import.go parseImportFile names the
        URNs; step.go's planned ImportStep copies the read inputs). The file is refused as parseImportFile refuses
        it (checked at v3.150.0 and 1b594989): `name` and `logicalName` default to each other; a resource needs an
        `id` unless it is a `component`, which may not have one; a `parent` names another entry's `name`."""
        self.calls.append(f"{self.project}: import")
        problems = import_file_problems(specs)
        if problems:
            text = f"error: {len(problems)} error{'s' * (len(problems) > 1)} occurred:\n" + "".join(
                f"\t* {line}\n" for line in problems
            )
            from toolkit.gcp import pulumi_engine

            raise pulumi_engine.EngineFailed(f"Pulumi failed: {problems[0]}", text)
        resources, outputs = self._load()
        by_name: dict[str, str] = {}
        for spec in specs:
            parent = by_name.get(spec.get("parent", ""))
            urn = self._urn(spec["type"], spec.get("logicalName") or spec["name"], parent)
            by_name[spec["name"]] = urn
            entry: dict[str, Any] = {"urn": urn, "custom": not spec.get("component"), "type": spec["type"]}
            if parent:
                entry["parent"] = parent
            if spec["type"] == BUCKET:
                bucket = self.gcs.lookup_bucket(spec["id"])
                if bucket is None:
                    raise self._failed(BUCKET, spec["name"], f"resource '{spec['id']}' does not exist")
                read = self.labels.read(self.recorded.get(spec["id"], {"name": spec["id"]}), dict(bucket.labels or {}))
                entry.update(id=spec["id"], inputs=read, outputs={**read, "effectiveLabels": dict(bucket.labels)})
            resources[urn] = entry
        self._save(resources, outputs)
