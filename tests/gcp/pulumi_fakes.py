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

import gzip
import json
import os
import stat
import sys
from collections.abc import Iterable
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
    log.write(json.dumps({{"argv": argv, "env": {{k: os.environ.get(k) for k in names}}}}) + "\n")
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
answer = behaviour.get("answers", {{}}).get(verb)
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
        """What `pulumi <verb>` prints and how it exits."""
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
) -> Path:
    """A diy backend's checkpoint for `stack` of project lab: the stack resource with `outputs`, the default gcp
    provider, `resources` as (type, name) (components, whose type is lab:..., are not custom), `deleted` as
    (type, name) marked `delete: true` (replaced, still there), and `pending` as (operation type, type, name) in
    pending_operations. `compression`: None, "gzip" or "zstd" (.json, .json.gz, .json.zst)."""
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
    document = {"version": 3, "checkpoint": {"stack": f"organization/lab/{stack}", "latest": latest}}
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
        path = backend / ".pulumi" / "stacks" / "lab" / f"{stack}{suffix}"
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
