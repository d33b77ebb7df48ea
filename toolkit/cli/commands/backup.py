"""`lab backup`: an online, verified snapshot of the tracker's DBs, kept locally and in the bucket."""

from __future__ import annotations

import json

from toolkit.cli import options
from toolkit.console import err, out
from toolkit.errors import LabError
from toolkit.labs import choose as targets
from toolkit.labs import local as local_lab

PROGRESS_FROM_BYTES = 64 << 20


def backup(
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
    as_json: options.Json = False,
) -> None:
    """Take a consistent snapshot of the tracker while it runs: integrity-checked, checksummed, with a
    manifest, rotated, and uploaded to the bucket when one is configured."""
    chosen = targets.choose(stack_name, local, target)
    targets.require(chosen, "backup")
    if chosen != "local":
        _backup_remote(stack_name, chosen, as_json)
        return
    lab = local_lab.open_lab(stack_name)
    if not lab.mlflow_db.exists():
        raise LabError(f"there is no tracker DB at {lab.mlflow_db} yet", hint="start the lab with `lab up --local`")
    uploaded: str | None = None
    failure: LabError | None = None
    large = lab.mlflow_db.stat().st_size >= PROGRESS_FROM_BYTES and not as_json
    try:
        if large:
            from rich.progress import Progress

            with Progress(console=err(), transient=True) as bar:
                task = bar.add_task("snapshot", total=None)
                made, uploaded = local_lab.backup_now(
                    lab, reason="manual", progress=lambda done, total: bar.update(task, completed=done, total=total)
                )
        else:
            made, uploaded = local_lab.backup_now(lab, reason="manual")
    except local_lab.UploadFailed as exc:
        made, failure = exc.backup, exc
    manifest = made.manifest
    if as_json:
        document = json.loads(manifest.to_json())
        document.update({"path": str(made.path), "uploaded": uploaded})
        out().print_json(json.dumps(document))
    else:
        for described in manifest.files:
            counts = ", ".join(f"{v} {k}" for k, v in described.counts.items())
            out().print(
                f"{described.name}: {described.size:,} bytes, integrity {described.integrity}, "
                f"sha256 {described.sha256[:12]}..., {counts}"
            )
        out().print(f"backup {manifest.id} -> {made.path}")
        if uploaded:
            out().print(f"uploaded and verified: {uploaded}")
    if failure:
        raise failure


def _backup_remote(stack_name: str, target: str, as_json: bool) -> None:
    from toolkit.labs import ssh as remote_lab

    lab = remote_lab.open_lab(stack_name, target)
    made, document = remote_lab.backup(lab, reason="manual", say=err().print)
    if as_json:
        document.update({"path": str(made.path), "tracker_path": document.get("path")})
        out().print_json(json.dumps(document))
        return
    out().print(f"backup {made.manifest.id} -> {made.path} (taken on {lab.tracker.name}, verified here)")
    if document.get("uploaded"):
        out().print(f"uploaded and verified: {document['uploaded']}")
