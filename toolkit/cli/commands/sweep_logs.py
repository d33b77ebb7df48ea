"""`lab sweep logs NAME [--trial N] [--follow]`: what a sweep did, or one trial's output while it runs."""

from __future__ import annotations

import subprocess
from typing import Annotated, Optional

import typer

from toolkit.cli import options
from toolkit.errors import LabError


def logs(
    name: Annotated[str, typer.Argument(help="The sweep (its study's name).")],
    trial: Annotated[
        Optional[int],  # noqa: UP045 -- typer reads the annotation at run time on Python 3.10 too
        typer.Option("--trial", min=0, help="One trial's output (its cells' output as it runs)."),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Go on printing what is written, until it ends.")
    ] = False,
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
) -> None:
    """Print a sweep's log (trials started and ended, and why), or one trial's output; --follow goes on."""
    from toolkit import labs
    from toolkit.sweeps import hosting, service

    service.check_name(name)
    lab = labs.open_lab(stack_name, local=local, target=options.target_name(target))
    host = hosting.holding(lab.sweep_hosts(), name)  # a detached sweep's record, or a terminal's here
    argv = host.command("logs", "--name", name, *(["--trial", str(trial)] if trial is not None else []))
    process = subprocess.Popen([*argv, *(["--follow"] if follow else [])], stderr=subprocess.PIPE)
    assert process.stderr is not None  # noqa: S101
    try:
        code = process.wait()
    except KeyboardInterrupt:
        process.terminate()
        return
    if code != 0:
        said = process.stderr.read().decode(errors="replace").strip().splitlines()
        raise LabError(said[-1].removeprefix("error: ") if said else f"no logs of sweep {name!r} {host.where}")
