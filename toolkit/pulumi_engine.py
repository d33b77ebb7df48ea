"""The narrow seam between lab and the Pulumi engine: the Automation API over the project's `infra/` program.

Everything the gcp target asks of Pulumi goes through `Engine` (preview, up, destroy); reading state goes
through `toolkit.pulumi_state`, which needs no CLI. `AutomationEngine` is the real one: a LocalWorkspace in
the project folder (Pulumi.yaml, `main: infra/`, the stack file as the stack's config), the backend from
lab:stateBackend, the secrets provider from lab:secretsProvider, the CLI from PATH or from
`lab doctor --install-pulumi`. Run-time choices the stack file does not hold (the zone the workers go to
after a stockout, on-demand fallback) reach the program as environment variables (`RunChoices`), read in
one place, `infra/stack_config.py`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from toolkit import paths, pulumi_state, schema
from toolkit.errors import EXIT_LOCKED, LabError

WORKER_ZONE_ENV = "LAB_WORKER_ZONE"
ON_DEMAND_ENV = "LAB_WORKER_ON_DEMAND"
ADOPT_BUCKET_ENV = "LAB_ADOPT_BUCKET"

Say = Callable[[str], None]


@dataclass(frozen=True)
class RunChoices:
    """What this run decided beyond the stack file: where the workers go, and whether spot is waived."""

    worker_zone: str | None = None
    on_demand: bool = False
    adopt_bucket: str | None = None  # a bucket this lab kept through `lab down`, taken back into the state

    def env(self) -> dict[str, str]:
        found = {}
        if self.worker_zone:
            found[WORKER_ZONE_ENV] = self.worker_zone
        if self.on_demand:
            found[ON_DEMAND_ENV] = "1"
        if self.adopt_bucket:
            found[ADOPT_BUCKET_ENV] = self.adopt_bucket
        return found


@dataclass
class Plan:
    """A preview: how many resources each operation touches, and which ones."""

    counts: dict[str, int] = field(default_factory=dict)  # create, update, replace, delete, same
    steps: list[tuple[str, str, str]] = field(default_factory=list)  # (op, type, name), changes only

    @property
    def changes(self) -> int:
        return sum(n for op, n in self.counts.items() if op != "same")


class EngineFailed(LabError):
    """The engine reported an error; `text` is its output, for `toolkit.capacity` to read."""

    def __init__(self, message: str, text: str, *, hint: str | None = None, code: int = 1) -> None:
        super().__init__(message, hint=hint, code=code)
        self.text = text


class Engine(Protocol):
    def preview(self, choices: RunChoices, say: Say) -> Plan: ...

    def up(self, choices: RunChoices, say: Say) -> dict[str, Any]: ...

    def destroy(self, say: Say) -> None: ...


def find_cli() -> Path | None:
    """The Pulumi CLI: on PATH, else the one `lab doctor --install-pulumi` put under LAB_HOME."""
    found = shutil.which("pulumi")
    if found:
        return Path(found)
    installed = paths.pulumi_cli_root() / "bin" / "pulumi"
    return installed if installed.is_file() and os.access(installed, os.X_OK) else None


def _last_error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower():
            return line.removeprefix("error:").strip()
    return lines[-1] if lines else "no output"


class AutomationEngine:
    """The real engine: `pulumi preview/up/destroy` of the project's program through the Automation API."""

    def __init__(self, settings: schema.Settings, project_dir: Path) -> None:
        self.settings = settings
        self.project_dir = project_dir
        self.backend = pulumi_state.backend_url(settings)
        cli = find_cli()
        if cli is None:
            raise LabError(
                "the gcp target needs the Pulumi CLI, and there is none on PATH or under LAB_HOME",
                hint="run `lab doctor --install-pulumi`",
            )
        self.cli = cli
        pulumi_state.passphrase_ready(settings)

    def _env(self, choices: RunChoices) -> dict[str, str]:
        env = {"PULUMI_BACKEND_URL": self.backend, "PULUMI_SKIP_UPDATE_CHECK": "true", **choices.env()}
        for name in (WORKER_ZONE_ENV, ON_DEMAND_ENV, ADOPT_BUCKET_ENV):
            env.setdefault(name, "")
        return env

    def _open(self, choices: RunChoices) -> Any:
        from pulumi import automation as auto

        if self.backend.startswith("file://"):
            Path(self.backend.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
        provider = None if self.settings.secrets_provider == "passphrase" else self.settings.secrets_provider
        options = auto.LocalWorkspaceOptions(
            work_dir=str(self.project_dir),
            env_vars=self._env(choices),
            secrets_provider=provider,
            pulumi_command=auto.PulumiCommand(root=str(self.cli.parent.parent), skip_version_check=True),
        )
        try:
            return auto.create_or_select_stack(self.settings.stack, work_dir=str(self.project_dir), opts=options)
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
        return EngineFailed(f"Pulumi failed while {doing}: {_last_error_line(text)}", text)

    def preview(self, choices: RunChoices, say: Say) -> Plan:
        from pulumi import automation as auto

        stack = self._open(choices)
        plan = Plan()

        def on_event(event: Any) -> None:
            step = getattr(event, "resource_pre_event", None)
            metadata = getattr(step, "metadata", None)
            if metadata is None:
                return
            op = str(getattr(metadata.op, "value", metadata.op)).lower()
            if op not in ("same", "read"):
                plan.steps.append((op, metadata.type, metadata.urn.rsplit("::", 1)[-1]))

        try:
            result = stack.preview(on_output=say, on_event=on_event, refresh=True, color="never")
        except auto.CommandError as exc:
            raise self._failed("previewing", exc) from None
        plan.counts = {str(getattr(op, "value", op)).lower(): n for op, n in (result.change_summary or {}).items()}
        return plan

    def up(self, choices: RunChoices, say: Say) -> dict[str, Any]:
        from pulumi import automation as auto

        stack = self._open(choices)
        try:
            result = stack.up(on_output=say, refresh=True, color="never", suppress_progress=True)
        except auto.CommandError as exc:
            raise self._failed("creating the lab", exc) from None
        return {name: output.value for name, output in result.outputs.items()}

    def destroy(self, say: Say) -> None:
        from pulumi import automation as auto

        stack = self._open(RunChoices())
        try:
            stack.destroy(on_output=say, color="never", suppress_progress=True)
        except auto.CommandError as exc:
            raise self._failed("destroying the lab", exc) from None
