"""`lab ssh HOST [COMMAND...]`: a shell (or one command) on one of the lab's hosts."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from toolkit.cli import options


def ssh(
    host: Annotated[str, typer.Argument(help="tracker, worker-1, ... (or the host's address)")],
    command: Annotated[
        Optional[list[str]],  # noqa: UP045 -- typer reads the annotation at run time on Python 3.10 too
        typer.Argument(help="A command to run instead of a shell (put it after --)."),
    ] = None,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
) -> None:
    """Log in to one of the lab's hosts with the lab's key and known-hosts file."""
    from toolkit import labs
    from toolkit.console import Ui

    lab = labs.open_lab(stack_name, target=options.target_name(target), ui=Ui())
    argv = lab.login(host, command or None)
    os.execvp(argv[0], argv)  # noqa: S606 -- hand the terminal to ssh
