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
) -> None:
    """Back up the tracker (verified), then stop the lab's services. If the backup fails, nothing is
    stopped (unless --force). Nothing running is "nothing to do"."""
    targets.require_local(targets.choose(stack_name, local, target), "down")
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
