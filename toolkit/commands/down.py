"""`lab down`: a verified backup of the tracker first, then the lab's services stop."""

from __future__ import annotations

from typing import Annotated

import typer

from toolkit import local_lab, options, targets
from toolkit.console import err, out
from toolkit.errors import LabError


def down(
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
    yes: options.Yes = False,
    force: Annotated[bool, typer.Option("--force", help="Stop even if the backup fails.")] = False,
    as_json: options.Json = False,
) -> None:
    """Back up the tracker (verified), then stop the lab's services. If the backup fails, nothing is
    stopped (unless --force). Nothing running is "nothing to do"."""
    chosen = targets.choose(stack_name, local, target)
    targets.require(chosen, "down")
    if chosen != "local":
        _down_remote(stack_name, chosen, force, as_json)
        return
    del yes  # the local lab asks nothing; accepted so scripts can pass it to every target
    lab = local_lab.open_lab(stack_name)
    say = err().print
    up = [name for name in (local_lab.JUPYTER, local_lab.MLFLOW) if local_lab.running(lab, name, say)]
    if not up:
        out().print("nothing to do: the lab is not running")
        return
    if lab.mlflow_db.exists():
        try:
            made, _ = local_lab.backup_now(lab, reason="down")
            say(f"backup {made.manifest.id} verified: {made.path}")
        except local_lab.UploadFailed as exc:
            say(f"warning: {exc.one_line()}")
        except LabError as exc:
            if not force:
                raise LabError(
                    f"the backup failed, so nothing was stopped: {exc.one_line()}",
                    hint="fix that, or pass --force to stop without a backup",
                ) from None
            say(f"warning: stopping without a backup (--force): {exc.one_line()}")
    stopped = local_lab.stop_all(lab, say)
    out().print(f"the lab is down ({', '.join(stopped)} stopped)")


def _down_remote(stack_name: str, target: str, force: bool, as_json: bool) -> None:
    import json

    from toolkit import configure, remote_lab

    lab = remote_lab.open_lab(stack_name, target)
    say = err().print
    made = None
    try:
        made, _ = remote_lab.backup(lab, reason="down", say=say)
    except LabError as exc:
        if not force:
            raise LabError(
                f"the backup failed, so nothing was stopped: {exc.one_line()}",
                hint="fix that, or pass --force to stop without a backup",
            ) from None
        say(f"warning: stopping without a backup (--force): {exc.one_line()}")
    if as_json:
        report = remote_lab.stop_services(lab, say, lambda r: None)
    else:
        from rich.live import Live

        with Live(console=err(), refresh_per_second=4, transient=True) as live:
            report = remote_lab.stop_services(lab, say, lambda r: live.update(configure.table(r)))
    if as_json:
        out().print_json(
            json.dumps(
                {
                    "backup": str(made.path) if made else None,
                    "stopped_on": sorted(report.hosts) if report else [],
                }
            )
        )
        return
    where = ", ".join(report.hosts) if report else "no host answered"
    out().print(f"the lab's services are stopped ({where}); the machines stay as they were")
    if made:
        out().print(f"backup {made.manifest.id} verified: {made.path}")
