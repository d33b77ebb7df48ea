"""The narrow seam between lab and the Pulumi engine: the Automation API over the project's `infra/` program.

Everything the gcp target asks of Pulumi goes through `Engine` (preview, up, destroy); reading state goes
through `toolkit.gcp.pulumi_state`, which needs no CLI. `AutomationEngine` is the real one: a LocalWorkspace in
the project folder (Pulumi.yaml, `main: infra/`, the stack file as the stack's config), the backend from
lab:stateBackend, the secrets provider from lab:secretsProvider, the CLI from PATH or from
`lab doctor --install-pulumi`. Run-time choices the stack file does not hold (the zone the workers go to
after a stockout, on-demand fallback) reach the program as environment variables (`RunChoices`), read in
one place, `infra/stack_config.py`.

A lab is two stacks of the same name: the lab's (project `lab`, `infra/`: everything `lab down` destroys) and its
persistent one (project `lab-persistent`, `infra/persistent/`: the artifact bucket, destroyed only by
`lab down --destroy-data`). `AutomationEngine(..., part=PERSISTENT)` drives the second. Its configuration is the lab
stack's file itself, copied byte for byte beside infra/persistent/Pulumi.yaml before each run (config, secure values
and Pulumi's encryptionsalt/secretsprovider/encryptedkey alike, so the same passphrase or KMS key opens both), so the
stack file stays the one source of truth; every command then finds it as Pulumi finds any stack's file.
Creating the persistent stack (`pulumi stack init`, which create_or_select_stack runs when `stack select` finds
none) keeps the copy's secrets settings (pulumi/pulumi@1b594989, also so at v3.150.0): CreateStack reads the
stack file already beside Pulumi.yaml (pkg/cmd/pulumi/stack/secrets.go createSecretsManagerForNewStack,
readStackConfiguration -> DetectProjectStack), and the diy backend's default passphrase manager uses its
`encryptionsalt` when there is one ("If we have a salt, we can just use it": pkg/secrets/passphrase/manager.go
NewPromptingPassphraseSecretsManager, via pkg/backend/diy/backend.go DefaultSecretManager), as a cloud provider
keeps its `encryptedkey` while `secretsprovider` is the same (pkg/secrets/cloud/manager.go NewCloudSecretsManager).
The lab stack's file has its salt by then: `lab up` previews the lab's stack (creating it) before the persistent
stack's first run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from toolkit.config import paths, schema
from toolkit.errors import EXIT_LOCKED, LabError
from toolkit.gcp import pulumi_state

WORKER_ZONE_ENV = "LAB_WORKER_ZONE"
ON_DEMAND_ENV = "LAB_WORKER_ON_DEMAND"
LAB = "lab"  # the lab's stack: infra/, all of it destroyed by `lab down`
PERSISTENT = "persistent"  # the persistent stack: infra/persistent/, never destroyed by a plain `lab down`
PROGRAMS = {LAB: Path(), PERSISTENT: Path("infra") / "persistent"}  # each part's Pulumi project folder

Say = Callable[[str], None]


@dataclass(frozen=True)
class RunChoices:
    """What this run decided beyond the stack file: where the workers go, and whether spot is waived."""

    worker_zone: str | None = None
    on_demand: bool = False

    def env(self) -> dict[str, str]:
        found = {}
        if self.worker_zone:
            found[WORKER_ZONE_ENV] = self.worker_zone
        if self.on_demand:
            found[ON_DEMAND_ENV] = "1"
        return found


# Step ops as the engine sends them (pkg/resource/deploy/step.go; automation/events.py OpType). A preview with
# --refresh sends a `refresh` step for every resource it reads back, then one logical step per resource of the
# program (same, create, update, delete, replace, read, import); a replacement also sends its physical halves
# (create-replacement, delete-replaced) and a leftover of an earlier replacement is deleted by a lone
# delete-replaced. What changes nothing in the cloud is not shown.
UNCHANGED_OPS = frozenset({"same", "read", "refresh", "discard", "discard-replaced", "remove-pending-replace"})
REPLACE_OPS = frozenset({"replace", "create-replacement", "read-replacement", "import-replacement"})
CHANGE_ORDER = ("create", "update", "replace", "delete", "import")


@dataclass
class Plan:
    """A preview: how many resources each operation touches, and which ones (one step per resource)."""

    counts: dict[str, int] = field(default_factory=dict)  # create, update, replace, delete, import, same
    steps: list[tuple[str, str, str]] = field(default_factory=list)  # (op, type, name), changes only

    @property
    def changes(self) -> int:
        return sum(n for op, n in self.counts.items() if op != "same")

    @classmethod
    def from_steps(cls, seen: Sequence[tuple[str, str, str]], summary: Mapping[str, int] | None = None) -> Plan:
        """The plan from the engine's steps, (op, urn, type) in the order they came: each resource once, with
        what will happen to it; the stack itself and providers are left out. Without any step, the summary's
        counts of logical steps."""
        ops_of: dict[str, tuple[str, list[str]]] = {}
        for op, urn, kind in seen:
            ops_of.setdefault(urn, (kind, []))[1].append(op)
        plan = cls()
        same = 0
        for urn, (kind, ops) in ops_of.items():
            if kind == pulumi_state.STACK_TYPE or kind.startswith(pulumi_state.PROVIDER_PREFIX):
                continue
            changing = [op for op in ops if op not in UNCHANGED_OPS]
            if not changing:
                same += 1
                continue
            if REPLACE_OPS.intersection(changing):
                op = "replace"
            elif "delete" in changing or "delete-replaced" in changing:
                op = "delete"
            else:
                op = changing[0]
            plan.steps.append((op, kind, urn.rsplit("::", 1)[-1]))
        if not ops_of and summary:
            plan.counts = {op: n for op, n in summary.items() if op in (*CHANGE_ORDER, "same") and n}
            return plan
        for op, _, _ in plan.steps:
            plan.counts[op] = plan.counts.get(op, 0) + 1
        plan.counts["same"] = same
        return plan


class EngineFailed(LabError):
    """The engine reported an error; `text` is its output, for `toolkit.gcp.capacity` to read."""

    def __init__(self, message: str, text: str, *, hint: str | None = None, code: int = 1) -> None:
        super().__init__(message, hint=hint, code=code)
        self.text = text


class Engine(Protocol):
    def preview(self, choices: RunChoices, say: Say) -> Plan: ...

    def up(self, choices: RunChoices, say: Say) -> dict[str, Any]: ...

    def destroy(self, say: Say, targets: list[str] | None = None) -> None: ...

    def adopt(self, resources: list[dict[str, Any]], say: Say) -> None:
        """`pulumi import --file`: take existing resources into the state as they are (pkg/cmd/pulumi/operations/
        import.go importSpec: type, name, logicalName, id, parent, component; parseImportFile: a component needs
        no id and may have none, `parent` names another entry, the URN is the parent's type and `logicalName`).
        Unlike a program's `import` option this never compares inputs (step.go ImportStep.Apply, the `planned`
        branch), so it cannot fail on labels the provider added."""
        ...

    def persistent(self) -> Engine:
        """The engine of this lab's persistent stack (what outlives `lab down`)."""
        ...


def usable_cli() -> Path:
    """The CLI to run, checked before anything runs: it exists, runs, and reports a version the lab supports.
    Every way it can fail is a one-line LabError naming the CLI and the fix."""
    from toolkit.gcp import pulumi_install

    cli = find_cli()
    if cli is None:
        installed = paths.pulumi_cli_root() / "bin" / "pulumi"
        if installed.is_file():
            raise cli_error(installed, f"{installed} is not executable")
        raise LabError(
            "the gcp target needs the Pulumi CLI, and there is none on PATH or under LAB_HOME",
            hint="run `lab doctor --install-pulumi`",
        )
    _, problem = pulumi_install.pulumi_problem(str(cli))
    if problem:
        raise cli_error(cli, problem)
    return cli


def cli_error(cli: Path, problem: str) -> LabError:
    from toolkit.gcp import pulumi_install

    return LabError(f"the Pulumi CLI cannot be used: {problem}", hint=pulumi_install.pulumi_fix(cli))


def find_cli() -> Path | None:
    """The Pulumi CLI: on PATH, else the one `lab doctor --install-pulumi` put under LAB_HOME."""
    found = shutil.which("pulumi")
    if found:
        return Path(found)
    installed = paths.pulumi_cli_root() / "bin" / "pulumi"
    return installed if installed.is_file() and os.access(installed, os.X_OK) else None


_COMMAND_RESULT = re.compile(r"\n code: -?\d+\n stdout: (?P<stdout>.*)\n stderr: (?P<stderr>.*)\Z", re.DOTALL)
_RESOURCE_HEADER = re.compile(r"^  (?P<type>\S+) \((?P<name>.*)\):$")
_OCCURRED = re.compile(r"\d+ errors? occurred:?$")
_GENERIC = re.compile(r"^(update|preview|destroy|refresh|import) failed$")


def _diagnostics(stdout: str) -> list[tuple[str, str, list[str]]]:
    """(type, name, lines) of each resource in the `Diagnostics:` section of the engine's display, which
    pkg/backend/display/progress.go writes as "  <type> (<name>):" then each line indented by four spaces."""
    blocks: list[tuple[str, str, list[str]]] = []
    inside = False
    for line in stdout.splitlines():
        if line.rstrip() == "Diagnostics:":
            inside = True
        elif inside and line.strip() and not line.startswith(" "):
            inside = False  # the next section: Outputs:, Resources:, Duration:
        elif inside and (header := _RESOURCE_HEADER.match(line.rstrip())):
            blocks.append((header["type"], header["name"], []))
        elif inside and blocks and line.startswith("    "):
            blocks[-1][2].append(line[4:].strip())
    return blocks


def _reason(lines: list[str]) -> str | None:
    """What a resource's diagnostic says went wrong: the innermost error line (a provider wraps its errors in
    "N error(s) occurred:" lists of "* ..." items); for a program that raised, the exception's last line."""
    lines = [line for line in lines if line]
    if any("unhandled exception" in line for line in lines):
        return lines[-1]
    found = None
    for line in lines:
        for prefix in ("error:", "* "):
            if line.startswith(prefix):
                body = line[len(prefix) :].strip()
                if body and not _OCCURRED.search(body) and not _GENERIC.match(body):
                    found = body
                break
    return found


def engine_reason(text: str) -> str:
    """The one line that says why the engine failed: the failing resource and the cloud's reason from the
    Diagnostics section (not the stack's closing "update failed"), else the last error line, else the last."""
    parts = _COMMAND_RESULT.search(text)
    stdout, stderr = (parts["stdout"], parts["stderr"]) if parts else (text, "")
    blocks = _diagnostics(stdout)
    failed = [(kind, name, reason) for kind, name, lines in blocks if (reason := _reason(lines))]
    resources = [f"{name}: {reason}" for kind, name, reason in failed if kind != pulumi_state.STACK_TYPE]
    if resources:
        more = f" (and {len(resources) - 1} more)" if len(resources) > 1 else ""
        return resources[0] + more
    if failed:
        return failed[0][2]
    lines = [line.strip() for line in f"{stdout}\n{stderr}".splitlines() if line.strip()]
    for line in reversed(lines):
        body = re.sub(r"^(stdout|stderr):\s*", "", line).removeprefix("error:").strip()
        if "error" in line.lower() and body and not _GENERIC.match(body) and not _OCCURRED.search(body):
            return body
    return lines[-1] if lines else "no output"


class AutomationEngine:
    """The real engine: `pulumi preview/up/destroy` of the project's program through the Automation API."""

    def __init__(self, settings: schema.Settings, project_dir: Path, part: str = LAB) -> None:
        self.settings = settings
        self.project_dir = project_dir
        self.part = part
        self.work_dir = project_dir / PROGRAMS[part]
        self.stack_file = project_dir / f"Pulumi.{settings.stack}.yaml"  # where Pulumi finds the lab stack's config
        self.backend = pulumi_state.backend_url(settings)
        self.cli = usable_cli()
        pulumi_state.passphrase_ready(settings)

    def persistent(self) -> AutomationEngine:
        return AutomationEngine(self.settings, self.project_dir, PERSISTENT)

    def _env(self, choices: RunChoices) -> dict[str, str]:
        env = {
            "PULUMI_BACKEND_URL": self.backend,
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            # The program (infra/, which imports toolkit) runs with the Python that runs lab, not with the first
            # python3 on PATH: the pip toolchain of Pulumi's Python language host runs $PULUMI_PYTHON_CMD when
            # Pulumi.yaml names no virtualenv (sdk/python/toolchain/pip.go@01ba6bcc CommandPath).
            "PULUMI_PYTHON_CMD": sys.executable,
            **choices.env(),
        }
        for name in (WORKER_ZONE_ENV, ON_DEMAND_ENV):
            env.setdefault(name, "")
        return env

    def _config(self) -> None:
        """The persistent part's stack file: the lab stack's, copied (generated; infra/persistent/.gitignore)."""
        if self.part == LAB:
            return
        copy = self.work_dir / self.stack_file.name
        try:
            text = self.stack_file.read_bytes()
            if not copy.is_file() or copy.read_bytes() != text:
                copy.write_bytes(text)
        except OSError as exc:
            raise LabError(f"cannot copy {self.stack_file} to {copy}: {exc.strerror}") from None

    def _open(self, choices: RunChoices) -> Any:
        from pulumi import automation as auto

        self._config()
        if self.backend.startswith("file://"):
            Path(self.backend.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
        provider = None if self.settings.secrets_provider == "passphrase" else self.settings.secrets_provider
        try:  # runs `pulumi version` again (checked in usable_cli): the CLI may have changed since
            command = auto.PulumiCommand(root=str(self.cli.parent.parent), skip_version_check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            raise cli_error(self.cli, f"{self.cli} does not run: {exc}") from None
        options = auto.LocalWorkspaceOptions(
            work_dir=str(self.work_dir),
            env_vars=self._env(choices),
            secrets_provider=provider,
            pulumi_command=command,
        )
        try:
            return auto.create_or_select_stack(self.settings.stack, work_dir=str(self.work_dir), opts=options)
        except auto.CommandError as exc:
            raise self._failed("selecting the stack", exc) from None

    def _failed(self, doing: str, exc: Exception) -> LabError:
        from pulumi import automation as auto

        text = "\n".join(str(part) for part in (getattr(exc, "stdout", ""), getattr(exc, "stderr", ""), exc) if part)
        if isinstance(exc, auto.ConcurrentUpdateError) or "is currently locked" in text:
            return EngineFailed(
                f"the stack {self.settings.stack} is locked: another `lab up`/`lab down` (or pulumi) is running",
                text,
                hint="wait for it to finish; if it died, `pulumi cancel` releases the lock",
                code=EXIT_LOCKED,
            )
        return EngineFailed(f"Pulumi failed while {doing}: {engine_reason(text)}", text)

    def preview(self, choices: RunChoices, say: Say) -> Plan:
        from pulumi import automation as auto

        stack = self._open(choices)
        seen: list[tuple[str, str, str]] = []  # (op, urn, type) of every step, as the engine sent them

        def on_event(event: Any) -> None:
            metadata = getattr(getattr(event, "resource_pre_event", None), "metadata", None)
            if metadata is not None:
                seen.append((str(getattr(metadata.op, "value", metadata.op)), metadata.urn, metadata.type))

        try:
            result = stack.preview(on_output=say, on_event=on_event, refresh=True, color="never")
        except auto.CommandError as exc:
            raise self._failed("previewing", exc) from None
        summary = {str(getattr(op, "value", op)): n for op, n in (result.change_summary or {}).items()}
        return Plan.from_steps(seen, summary)

    def up(self, choices: RunChoices, say: Say) -> dict[str, Any]:
        from pulumi import automation as auto

        stack = self._open(choices)
        try:
            result = stack.up(on_output=say, refresh=True, color="never", suppress_progress=True)
        except auto.CommandError as exc:
            doing = "creating the lab" if self.part == LAB else "keeping the lab's bucket"
            raise self._failed(doing, exc) from None
        return {name: output.value for name, output in result.outputs.items()}

    def destroy(self, say: Say, targets: list[str] | None = None) -> None:
        """Destroy the stack, or only `targets` (URNs) and what depends on them (`lab down` takes the workers
        first)."""
        from pulumi import automation as auto

        stack = self._open(RunChoices())
        try:
            stack.destroy(
                on_output=say,
                color="never",
                suppress_progress=True,
                target=targets or None,
                target_dependents=True if targets else None,
            )
        except auto.CommandError as exc:
            doing = "destroying the workers" if targets else "destroying the lab"
            raise self._failed(doing if self.part == LAB else "destroying the lab's persistent stack", exc) from None

    def adopt(self, resources: list[dict[str, Any]], say: Say) -> None:
        from pulumi import automation as auto

        stack = self._open(RunChoices())
        try:  # Stack.import_resources: in the Python Automation API since 3.127 (pyproject's floor is 3.150); it
            # writes `resources` as they are into the file it passes with --file (automation/_stack.py@v3.150.0)
            stack.import_resources(resources=resources, on_output=say, generate_code=False, protect=False)
        except auto.CommandError as exc:
            raise self._failed("taking the kept bucket into the persistent stack", exc) from None
