"""`lab ssh HOST [COMMAND...]`: a shell (or one command) on one of the lab's hosts."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from toolkit.cli import options
from toolkit.errors import LabError
from toolkit.labs import choose as targets


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
    from toolkit.hosts import ssh as remote
    from toolkit.labs import ssh as remote_lab

    chosen = targets.choose(stack_name, False, target)
    if chosen == "local":
        raise LabError("the local lab has no hosts to log in to", hint="use --target ssh with a stack that lists hosts")
    targets.require(chosen, "ssh", supported=("ssh", "gcp"))
    lab = remote_lab.open_lab(stack_name, chosen)
    for stopped in lab.stopped:
        if host in (stopped.host.name, stopped.instance):
            raise LabError(
                f"{stopped.host.name} ({stopped.instance}) is {stopped.describe()}", hint="`lab up` starts it"
            )
    found = remote.find(lab.hosts, host)
    argv = lab.access.ssh(found, command or None, extra=[] if command else ["-t"])
    os.execvp(argv[0], argv)  # noqa: S606 -- hand the terminal to ssh
