"""`lab backup`: an online, verified snapshot of the tracker's DBs, kept here and in the bucket."""

from __future__ import annotations

from toolkit.cli import options


def backup(
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
    as_json: options.Json = False,
) -> None:
    """Take a consistent snapshot of the tracker while it runs: integrity-checked, checksummed, with a
    manifest, rotated, and uploaded to the bucket when one is configured."""
    from toolkit import labs
    from toolkit.cli.render import show
    from toolkit.console import Ui

    ui = Ui(json=as_json)
    lab = labs.open_lab(stack_name, local=local, target=options.target_name(target), ui=ui)
    show(lab.backup(ui), as_json)
