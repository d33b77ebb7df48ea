"""`lab down`: a verified backup of the tracker first, then the lab's services stop."""

from __future__ import annotations

from typing import Annotated

import typer

from toolkit.cli import options
from toolkit.console import err, out
from toolkit.errors import EXIT_BACKUP_FAILED, LabError
from toolkit.labs import choose as targets
from toolkit.labs import local as local_lab


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
    """Back up the tracker (verified), then stop the lab's services (gcp: destroy its VMs; the bucket and
    its backups stay unless --destroy-data). If the backup fails, nothing is stopped or destroyed (unless
    --force; exit code 4). Nothing running is "nothing to do" (exit 0)."""
    chosen = targets.choose(stack_name, local, target)
    targets.require(chosen, "down")
    if destroy_data and chosen != "gcp":
        raise LabError("--destroy-data is for the gcp target", hint="the local and ssh targets never delete data")
    if chosen == "gcp":
        _down_gcp(stack_name, yes, force, destroy_data, as_json)
        return
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
                    code=EXIT_BACKUP_FAILED,
                ) from None
            say(f"warning: stopping without a backup (--force): {exc.one_line()}")
    stopped = local_lab.stop_all(lab, say)
    out().print(f"the lab is down ({', '.join(stopped)} stopped)")


def _down_remote(stack_name: str, target: str, force: bool, as_json: bool) -> None:
    import json

    from toolkit.hosts import configure
    from toolkit.labs import ssh as remote_lab

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
                code=EXIT_BACKUP_FAILED,
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


def _down_gcp(stack_name: str, yes: bool, force: bool, destroy_data: bool, as_json: bool) -> None:
    import json
    from pathlib import Path
    from typing import Any

    from toolkit.config import paths
    from toolkit.gcp import pulumi_engine
    from toolkit.labs import gcp as gcp_lab
    from toolkit.labs import ssh as remote_lab

    say = err().print
    settings = gcp_lab.settings_of(stack_name)
    if destroy_data:
        ask = gcp_lab.confirm_with(yes)
        bucket = settings.bucket_name or "the lab's bucket"
        if not ask(f"Delete gs://{bucket} with every artifact and backup in it, for good?"):
            raise LabError("nothing was destroyed: deleting the data was not confirmed")
        if not yes and not ask(f"Really delete gs://{bucket}? This cannot be undone"):
            raise LabError("nothing was destroyed: deleting the data was not confirmed twice")

    def backup(outputs: dict[str, Any]) -> Path | None:
        if not outputs.get("tracker_external_ip"):
            say("no tracker in the Pulumi state: nothing to back up")
            return None
        lab = remote_lab.open_lab(stack_name, "gcp")
        made, _ = remote_lab.backup(lab, reason="down", say=say)
        return made.path

    def stop_tracker(outputs: dict[str, Any]) -> None:
        """Without SSH (a scheduled `lab down` from elsewhere): stop the tracker VM through the Compute API;
        its shutdown unit backs it up to the bucket (gcp_lab.teardown waits for that backup there)."""
        from toolkit.gcp import api as gcp_api

        name, zone = outputs.get("tracker_name"), outputs.get("zone")
        if not isinstance(name, str) or not isinstance(zone, str):
            raise LabError("the Pulumi state names no tracker VM to stop")
        say(f"stopping {name} through the Compute API")
        gcp_api.stop_instance(settings.project or "", zone, name)

    with gcp_lab.stack_lock(settings, "down"):
        done = gcp_lab.teardown(
            settings,
            lambda: pulumi_engine.AutomationEngine(settings, paths.project_dir()),
            backup=backup,
            say=say,
            stop_tracker=stop_tracker,
            destroy_data=destroy_data,
            force=force,
        )
    if done is None:
        gcp_lab.record_down(settings)
        if as_json:
            out().print_json(json.dumps({"stack": settings.stack, "destroyed": 0, "nothing_to_do": True}))
        else:
            out().print(f"nothing to do: the gcp lab of stack {settings.stack} is not up")
        return
    gcp_lab.record_down(settings)
    remote_lab.forget_all_host_keys(paths.stack_home(settings.stack))
    if as_json:
        out().print_json(
            json.dumps(
                {
                    "stack": settings.stack,
                    "destroyed": done.destroyed,
                    "backup": str(done.backup) if done.backup else None,
                    "bucket_deleted": done.bucket_deleted,
                    "backup_by": done.backup_by if done.backup else None,
                    "leftovers": done.leftovers,
                    "leftovers_checked": bool(done.leftover_check is None or done.leftover_check.checked),
                    "stages_s": {k: round(v, 1) for k, v in done.stages.items()},
                }
            )
        )
    else:
        out().print(f"destroyed {done.destroyed} resources of stack {settings.stack}")
        if done.backup:
            by = " (taken by the tracker as it stopped)" if done.backup_by == "tracker" else ""
            out().print(f"backup verified{by}: {done.backup}")
        if done.bucket_deleted:
            out().print(f"deleted the bucket gs://{done.bucket_deleted} with its artifacts and backups")
        elif settings.bucket_name:
            out().print(f"the bucket gs://{settings.bucket_name} and its backups stay (--destroy-data deletes them)")
    unchecked = done.leftover_check is not None and not done.leftover_check.checked
    if done.leftovers or unchecked:
        raise gcp_lab.leftovers_error(done.leftovers, done.leftover_check)
