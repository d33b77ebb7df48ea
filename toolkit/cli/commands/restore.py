"""`lab restore`: put a verified backup back as the tracker's DBs, keeping the DBs it replaces."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from toolkit.cli import options


def restore(
    name: Annotated[
        Optional[str],  # noqa: UP045 -- typer reads the annotation at run time on Python 3.10 too
        typer.Argument(metavar="[BACKUP]", help="A backup id (or its start) or folder; default: the newest."),
    ] = None,
    from_bucket: Annotated[bool, typer.Option("--from-bucket", help="Fetch the backup from the bucket.")] = False,
    stop: Annotated[bool, typer.Option("--stop", help="Stop the running tracker first.")] = False,
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
) -> None:
    """Restore the tracker from a backup: verified (checksum, integrity) before anything is touched;
    refused while the tracker runs unless --stop; the DBs it replaces are kept as a backup."""
    from toolkit import labs
    from toolkit.cli.render import show
    from toolkit.console import Ui
    from toolkit.labs.base import RestoreRequest

    ui = Ui()
    lab = labs.open_lab(stack_name, local=local, target=options.target_name(target), ui=ui)
    show(lab.restore(RestoreRequest(name=name, from_bucket=from_bucket, stop=stop), ui), as_json=False)
