"""Runs infra/__main__.py under Pulumi mocks (preview=False) and records what it registered.

The mocks stand in for the Pulumi engine and the GCP provider, which cannot run here: they echo each
resource's inputs back as its outputs and add the few values GCP would compute (an email, an IP).
"""

from __future__ import annotations

import json
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import settings as pulumi_settings

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"


@dataclass
class Registered:
    type: str
    name: str
    inputs: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProgramRun:
    resources: list[Registered]
    outputs: dict[str, Any]

    def of_type(self, type_: str) -> list[Registered]:
        return [r for r in self.resources if r.type == type_]

    def one_named(self, type_: str, name: str) -> Registered:
        found = [r for r in self.of_type(type_) if r.name == name]
        assert len(found) == 1, f"expected one {type_} named {name}"
        return found[0]

    def one(self, type_: str) -> Registered:
        found = self.of_type(type_)
        assert len(found) == 1, f"expected one {type_}, found {[r.name for r in found]}"
        return found[0]


class GcpMocks(pulumi.runtime.Mocks):
    def __init__(self, project: str) -> None:
        self.project = project
        self.registered: list[Registered] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        outputs = dict(args.inputs)
        if args.typ == "gcp:serviceaccount/account:Account":
            outputs["email"] = f"{args.inputs['accountId']}@{self.project}.iam.gserviceaccount.com"
            outputs["uniqueId"] = str(104_761_922_630_457_800_000 + len(self.of(args.typ)))  # GCP's 21 digits
        elif args.typ == "gcp:compute/address:Address":
            outputs["address"] = "10.42.0.2"
        elif args.typ == "gcp:storage/bucket:Bucket":
            outputs["url"] = f"gs://{args.inputs['name']}"
        elif args.typ == "gcp:compute/network:Network":
            outputs["selfLink"] = f"projects/{self.project}/global/networks/{args.inputs['name']}"
        elif args.typ == "gcp:compute/instance:Instance":
            number = len(self.of("gcp:compute/instance:Instance")) + 10
            outputs["currentStatus"] = "RUNNING"
            outputs["networkInterfaces"] = [
                {
                    **nic,
                    "networkIp": nic.get("networkIp") or f"10.42.0.{number}",
                    "accessConfigs": [{**ac, "natIp": f"198.51.100.{number}"} for ac in nic.get("accessConfigs", [])],
                }
                for nic in args.inputs.get("networkInterfaces", [])
            ]
        self.registered.append(Registered(args.typ, args.name, dict(args.inputs)))
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list | None]:
        raise AssertionError(f"the program made an unexpected provider call: {args.token}")

    def of(self, type_: str) -> list[Registered]:
        return [r for r in self.registered if r.type == type_]


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The mock monitor, also keeping the resource options the engine would see (retain, protect, dependencies)."""

    def __init__(self, mocks: GcpMocks) -> None:
        super().__init__(mocks)
        self.options: dict[tuple[str, str], dict[str, Any]] = {}

    def RegisterResource(self, request: Any) -> Any:
        self.options[(request.type, request.name)] = {
            "retain_on_delete": bool(request.retainOnDelete),
            "protect": bool(request.protect),
            "delete_before_replace": bool(request.deleteBeforeReplace),
            "import_id": request.importId or None,
            "parent": request.parent or None,
            "dependencies": tuple(request.dependencies),  # URNs: what the engine deletes this before
        }
        return super().RegisterResource(request)


def pulumi_config(raw: dict[str, Any]) -> dict[str, str]:
    """A stack file's values as the engine hands them to a program: strings, lists as JSON."""

    def text(value: Any) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, list | tuple | dict):
            return json.dumps(list(value) if isinstance(value, tuple) else value)
        return str(value)

    return {key: text(value) for key, value in raw.items() if value is not None}


def run_program(config: dict[str, Any], stack: str = "dev", program: Path = INFRA, project: str = "lab") -> ProgramRun:
    """Run a Pulumi program (infra/, or infra/persistent/ of project lab-persistent) through its entry point with
    this stack config; raise what the program raises."""
    mocks = GcpMocks(project=str(config.get("gcp:project", "test-project")))
    monitor = RecordingMonitor(mocks)
    pulumi_settings.set_root_resource(None)  # type: ignore[arg-type] -- a fresh stack for each run
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False, monitor=monitor)
    pulumi.runtime.set_all_config(pulumi_config(config))
    outputs: dict[str, Any] = {}

    @pulumi.runtime.test
    def main() -> pulumi.Output:
        runpy.run_path(str(program), run_name="__main__")
        root = pulumi_settings.get_root_resource()
        return pulumi.Output.from_input(dict(root.outputs)).apply(outputs.update)

    main()
    for resource in mocks.registered:
        resource.options = monitor.options[(resource.type, resource.name)]
    return ProgramRun(resources=mocks.registered, outputs=outputs)
