"""`lab down`: a verified backup of the tracker first, then the lab's services stop (gcp: its VMs go)."""

from __future__ import annotations

from typing import Annotated

import typer

from toolkit.cli import options


def down(
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
    yes: options.Yes = False,
    force: Annotated[bool, typer.Option("--force", help="Stop (gcp: destroy) even if the backup fails.")] = False,
    destroy_data: Annotated[
        bool,
        typer.Option(
            "--destroy-data", help="gcp: also delete the bucket with its artifacts and backups (asks twice; --yes)."
        ),
    ] = False,
    as_json: options.Json = False,
) -> None:
    """Back up the tracker (verified), then stop the lab's services (gcp: destroy its VMs, the workers
    first; the bucket and its backups stay unless --destroy-data). If the backup fails, the tracker is not
    stopped or destroyed (unless --force; exit code 4). Nothing running is "nothing to do" (exit 0)."""
    from toolkit import labs
    from toolkit.cli.render import show
    from toolkit.console import Ui
    from toolkit.labs.base import DownRequest

    ui = Ui(json=as_json, yes=yes)
    lab = labs.open_lab(stack_name, local=local, target=options.target_name(target), ui=ui)
    show(lab.down(DownRequest(force=force, destroy_data=destroy_data), ui), as_json)
