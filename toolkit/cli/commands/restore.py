"""`lab restore`: put a verified backup back as the tracker's DBs, keeping the DBs it replaces."""

from __future__ import annotations

import datetime as dt
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
    at: Annotated[
        Optional[str],  # noqa: UP045 -- typer reads the annotation at run time on Python 3.10 too
        typer.Option(
            "--at", metavar="TIME", help="The tracker as it was then, from the replica (ISO 8601, UTC if no zone)."
        ),
    ] = None,
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
) -> None:
    """Restore the tracker from a backup, or as it was at a point in time from the replica (--at): verified
    (checksum, integrity) before anything is touched; refused while the tracker runs unless --stop; the DBs it
    replaces are kept as a backup."""
    from toolkit import labs
    from toolkit.cli.render import show
    from toolkit.console import Ui
    from toolkit.labs.base import RestoreRequest

    ui = Ui()
    moment = _moment(at) if at else None
    lab = labs.open_lab(stack_name, local=local, target=options.target_name(target), ui=ui)
    show(lab.restore(RestoreRequest(name=name, from_bucket=from_bucket, stop=stop, at=moment), ui), as_json=False)


def _moment(text: str) -> dt.datetime:
    """--at TIME: ISO 8601 (2026-12-01T09:30:00Z, 2026-12-01 09:30); a time without a zone is UTC."""
    from toolkit.errors import EXIT_USAGE, LabError

    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise LabError(
            f"--at {text!r} is not a time", hint="give it as 2026-12-01T09:30:00Z", code=EXIT_USAGE
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)
