"""Stand-ins for what cannot run here: the Pulumi CLI (a script that logs how the Automation API calls it
and answers with real engine texts) and the engine's checkpoint files (the documented diy-backend format).
The code under test is real: the Automation API, lab's seam, state reader, locks and flows."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

GCP_STACK = {
    "gcp:project": "my-gcp-project",
    "gcp:region": "us-central1",
    "gcp:zone": "us-central1-a",
    "lab:allowedSshCidrs": ["203.0.113.0/24"],
}


def gcp_settings(**extra: Any) -> Any:
    """A valid gcp stack's settings (stack dev): GCP_STACK with `extra` keys on top."""
    from toolkit import schema

    resolved = schema.resolve({**GCP_STACK, **extra}, stack="dev")
    assert resolved.problems == [], resolved.problems
    return resolved.settings


FAKE_CLI = r"""#!{python}
import json, os, sys
argv = sys.argv[1:]
with open({log!r}, "a") as log:
    env = {{k: os.environ.get(k) for k in ("PULUMI_BACKEND_URL", "LAB_WORKER_ZONE", "LAB_WORKER_ON_DEMAND")}}
    log.write(json.dumps({{"argv": argv, "env": env}}) + "\n")
if argv[:1] == ["version"]:
    print("v3.272.0")
    sys.exit(0)
behaviour = json.loads(open({behaviour!r}).read() or "{{}}")
for verb, answer in behaviour.items():
    if verb in argv[:3]:
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


class FakeCli:
    """A `pulumi` executable at LAB_HOME/pulumi-cli/bin (where `lab doctor --install-pulumi` puts it)."""

    def __init__(self, lab_home: Path) -> None:
        self.bin = lab_home / "pulumi-cli" / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.log = lab_home / "fake-pulumi.log"
        self.behaviour = lab_home / "fake-pulumi.json"
        self.behaviour.write_text("{}")
        path = self.bin / "pulumi"
        path.write_text(FAKE_CLI.format(python=sys.executable, log=str(self.log), behaviour=str(self.behaviour)))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)

    def answer(self, verb: str, *, stdout: str = "", stderr: str = "", code: int = 0) -> None:
        current = json.loads(self.behaviour.read_text())
        current[verb] = {"stdout": stdout, "stderr": stderr, "code": code}
        self.behaviour.write_text(json.dumps(current))

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def path_without_pulumi() -> str:
    """PATH with every folder holding a real `pulumi` left out, so the fake is the one found."""
    return os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep) if not (Path(d) / "pulumi").exists())


def write_checkpoint(backend: Path, stack: str, outputs: dict[str, Any], resources: list[tuple[str, str]]) -> Path:
    """A diy backend's checkpoint for `stack` of project lab: the stack resource with `outputs`, a provider,
    and `resources` as (type, name)."""
    prefix = f"urn:pulumi:{stack}::lab::"
    entries: list[dict[str, Any]] = [
        {
            "urn": f"{prefix}pulumi:pulumi:Stack::lab-{stack}",
            "custom": False,
            "type": "pulumi:pulumi:Stack",
            "outputs": outputs,
        },
        {
            "urn": f"{prefix}pulumi:providers:gcp::default",
            "custom": True,
            "type": "pulumi:providers:gcp",
            "outputs": {},
        },
    ]
    entries += [
        {"urn": f"{prefix}{kind}::{name}", "custom": True, "type": kind, "outputs": {"name": name}}
        for kind, name in resources
    ]
    document = {
        "version": 3,
        "checkpoint": {"stack": f"organization/lab/{stack}", "latest": {"manifest": {}, "resources": entries}},
    }
    path = backend / ".pulumi" / "stacks" / "lab" / f"{stack}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


def write_lock(backend: Path, stack: str, who: str = "ci", host: str = "runner-7", pid: int = 4242) -> Path:
    path = backend / ".pulumi" / "locks" / "lab" / stack / "0b1c2d3e-lock.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "username": who, "hostname": host, "timestamp": "2026-11-22T03:00:00Z"}))
    return path
