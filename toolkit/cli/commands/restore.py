"""`lab restore`: put a verified backup back as the tracker's DBs, keeping the DBs it replaces."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from toolkit.cli import options
from toolkit.console import err, out
from toolkit.errors import LabError
from toolkit.labs import choose as targets
from toolkit.labs import local as local_lab
from toolkit.tracker import backups


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
    chosen_target = targets.choose(stack_name, local, target)
    targets.require(chosen_target, "restore")
    say = err().print
    if chosen_target != "local":
        _restore_remote(stack_name, chosen_target, name, from_bucket, stop)
        return
    lab = local_lab.open_lab(stack_name)
    if from_bucket:
        if not lab.bucket:
            raise LabError("no bucket is configured for this stack", hint="set lab:bucketName in the stack file")
        from toolkit.tracker import gcs

        chosen = gcs.download(lab.bucket, lab.stack, lab.backups_dir, name)
    elif name:
        chosen = backups.find(lab.backups_dir, name)
    else:
        known = backups.listing(lab.backups_dir)
        if not known:
            raise LabError(
                f"there are no backups in {lab.backups_dir}", hint="use --from-bucket or name a backup folder"
            )
        chosen = known[0]
    backups.verify(chosen.path)
    say(f"backup {chosen.manifest.id} verified")

    tracker = local_lab.running(lab, local_lab.MLFLOW, say)
    if tracker is not None:
        if not stop:
            raise LabError("the tracker is running", hint="pass --stop to stop it first, or `lab down --local`")
        local_lab.stop_all(lab, say)
    if lab.mlflow_db.exists():
        kept = backups.take(lab.tracker_dir, lab.backups_dir, stack=lab.stack, reason="pre-restore")
        say(f"kept the current DBs as backup {kept.manifest.id}")
    local_lab.install(lab, chosen, say)
    out().print(f"restored {chosen.manifest.id}; start the lab with `lab up --local`")


def _restore_remote(stack_name: str, target: str, name: str | None, from_bucket: bool, stop: bool) -> None:
    from toolkit.labs import ssh as remote_lab

    lab = remote_lab.open_lab(stack_name, target)
    say = err().print
    if from_bucket:
        if not lab.bucket:
            raise LabError("no bucket is configured for this stack", hint="set lab:bucketName in the stack file")
        from toolkit.tracker import gcs

        chosen = gcs.download(lab.bucket, lab.stack, lab.backups_dir, name)
    elif name:
        chosen = backups.find(lab.backups_dir, name)
    else:
        known = backups.listing(lab.backups_dir)
        if not known:
            raise LabError(f"there are no backups in {lab.backups_dir}", hint="take one with `lab backup`")
        chosen = known[0]
    backups.verify(chosen.path)
    say(f"backup {chosen.manifest.id} verified")
    remote_lab.restore(lab, chosen, stop=stop, say=say)
    out().print(f"restored {chosen.manifest.id} on {lab.tracker.name}")
