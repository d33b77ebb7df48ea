"""`lab config validate`: every problem of a stack, or a clear "valid"."""

from __future__ import annotations

import sys

from toolkit.cli import options
from toolkit.config import stack
from toolkit.console import out
from toolkit.errors import LabError


def validate(stack_name: options.Stack = options.STACK_DEFAULT, target: options.Target = None) -> None:
    """Check a stack file: unknown keys, wrong types, missing keys, zones, machine/GPU, world-open SSH."""
    stack_file, resolution = stack.load(stack_name, target=options.target_name(target))
    settings = resolution.settings
    if resolution.problems or settings is None:
        for problem in resolution.problems:
            print(f"{stack_file.path.name}: {problem}", file=sys.stderr)
        count = len(resolution.problems)
        raise LabError(
            f"{count} problem{'s' * (count != 1)} in {stack_file.path}",
            hint="fix them and run `lab config validate` again",
        )
    for warning in resolution.warnings:
        print(f"{stack_file.path.name}: warning: {warning}", file=sys.stderr)
    summary = f"target {settings.target}"
    if settings.target == "gcp":
        gpus = settings.worker_gpus
        gpu_text = f", {gpus.count} x {gpus.gpu} each" if gpus else ""
        kind = "spot" if settings.spot else "standard"
        summary += (
            f", {settings.workers} {kind} worker{'s' * (settings.workers != 1)} "
            f"{settings.worker_machine_type}{gpu_text} in {settings.zone}"
        )
    out().print(f"[green]ok[/green] {stack_file.path} is valid ({summary})")
