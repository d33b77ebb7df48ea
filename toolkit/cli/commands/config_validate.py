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
    from toolkit import labs

    summary = labs.lab_class(settings.target).summary(settings)
    out().print(f"[green]ok[/green] {stack_file.path} is valid ({summary})")
