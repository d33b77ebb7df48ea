"""`lab status`: each component's state, URL and uptime, and how old the latest backup is."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from toolkit import backups, local_lab, options, targets
from toolkit.console import err, out


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def status(
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
    as_json: options.Json = False,
) -> None:
    """Show the lab's components (state, URL, uptime) and the age of the latest backup."""
    chosen = targets.choose(stack_name, local, target)
    targets.require(chosen, "status")
    if chosen != "local":
        _status_remote(stack_name, chosen, as_json)
        return
    lab = local_lab.open_lab(stack_name)
    components: dict[str, dict[str, Any]] = {}
    for name in (local_lab.MLFLOW, local_lab.JUPYTER):
        record = local_lab.running(lab, name, err().print)
        components[name] = (
            {
                "state": "running",
                "url": record.url,
                "pid": record.pid,
                "port": record.port,
                "uptime_s": round(record.uptime_s),
                "log": record.log,
            }
            if record
            else {"state": "stopped"}
        )
    known = backups.listing(lab.backups_dir)
    latest = known[0].manifest if known else None
    now = dt.datetime.now(dt.timezone.utc)
    backup_info = {
        "count": len(known),
        "latest": latest.id if latest else None,
        "age_s": round((now - latest.created_at).total_seconds()) if latest else None,
        "folder": str(lab.backups_dir),
    }
    document = {
        "stack": lab.stack,
        "target": "local",
        "state_dir": str(lab.root),
        "components": components,
        "tracker_db": {
            "path": str(lab.mlflow_db),
            "size": lab.mlflow_db.stat().st_size if lab.mlflow_db.exists() else None,
        },
        "backups": backup_info,
        "bucket": lab.bucket,
    }
    if as_json:
        out().print_json(json.dumps(document))
        return
    from rich.table import Table

    table = Table(title=f"lab {lab.stack} (local)", title_justify="left")
    for column in ("component", "state", "url", "uptime"):
        table.add_column(column)
    for name, info in components.items():
        running = info["state"] == "running"
        table.add_row(
            name,
            "[green]running[/green]" if running else "[dim]stopped[/dim]",
            info.get("url", "-"),
            _age(info["uptime_s"]) if running else "-",
        )
    out().print(table)
    if latest:
        out().print(
            f"latest backup: {latest.id}, {_age(backup_info['age_s'])} old ({len(known)} kept in {lab.backups_dir})"
        )
    else:
        out().print("no backup yet: `lab backup` takes one")


def _backup_info(backups_dir: Any) -> dict[str, Any]:
    known = backups.listing(backups_dir)
    latest = known[0].manifest if known else None
    now = dt.datetime.now(dt.timezone.utc)
    return {
        "count": len(known),
        "latest": latest.id if latest else None,
        "age_s": round((now - latest.created_at).total_seconds()) if latest else None,
        "folder": str(backups_dir),
    }


def _status_remote(stack_name: str, target: str, as_json: bool) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from toolkit import remote, remote_lab
    from toolkit.errors import LabError

    if target == "gcp" and not _gcp_is_up(stack_name, as_json):
        return
    lab = remote_lab.open_lab(stack_name, target)

    def look(host: remote.Host) -> dict[str, Any]:
        info: dict[str, Any] = {"role": host.role, "address": host.address}
        try:
            info["services"] = remote_lab.units_state(lab, host)
            info["reachable"] = True
        except LabError as exc:
            info.update(reachable=False, error=exc.one_line(), services={})
        return info

    with ThreadPoolExecutor(max_workers=len(lab.hosts)) as pool:
        hosts = dict(zip([h.name for h in lab.hosts], pool.map(look, lab.hosts), strict=True))
    tracker: dict[str, Any] = {}
    if hosts[lab.tracker.name]["reachable"]:
        try:
            tracker = {**remote_lab.tracker_facts(lab), **json.loads(remote_lab.agent(lab, "status"))}
        except LabError as exc:
            tracker = {"error": exc.one_line()}
    document = {
        "stack": lab.stack,
        "target": target,
        "state_dir": str(lab.root),
        "hosts": hosts,
        "tracker": tracker,
        "backups": _backup_info(lab.backups_dir),
        "bucket": lab.bucket,
    }
    if as_json:
        out().print_json(json.dumps(document))
        return
    from rich.table import Table

    table = Table(title=f"lab {lab.stack} ({target})", title_justify="left")
    for column in ("host", "role", "address", "services"):
        table.add_column(column)
    for name, info in hosts.items():
        if not info["reachable"]:
            services = f"[red]unreachable[/red]: {info['error']}"
        else:
            services = ", ".join(
                f"{unit.split('.')[0]} "
                + ("[green]active[/green]" if state == "active" else f"[yellow]{state}[/yellow]")
                for unit, state in info["services"].items()
            )
        table.add_row(name, info["role"], info["address"], services)
    out().print(table)
    if tracker.get("mlflow_url"):
        out().print(f"MLflow {tracker['mlflow_url']} (inside the lab's network; `lab tunnel` reaches it from here)")
    newest = tracker.get("newest_backup")
    if newest:
        out().print(f"newest backup on the tracker: {newest['id']} ({tracker.get('backups')} kept there)")
    info = document["backups"]
    if info["latest"]:
        out().print(f"newest backup here: {info['latest']}, {_age(info['age_s'])} old ({info['count']} kept)")
    else:
        out().print("no backup here yet: `lab backup` takes one")


def _gcp_is_up(stack_name: str, as_json: bool) -> bool:
    """Whether the gcp lab has a tracker in its Pulumi state; if not, say so (that is not an error)."""
    from toolkit import gcp_lab, pulumi_state

    settings = gcp_lab.settings_of(stack_name)
    backend = pulumi_state.backend_url(settings)
    state = pulumi_state.read(backend, settings.stack)
    if state is not None and state.outputs.get("tracker_external_ip"):
        return True
    left = len(state.cloud_resources) if state else 0
    if as_json:
        out().print_json(json.dumps({"stack": settings.stack, "target": "gcp", "up": False, "resources": left}))
    else:
        out().print(f"the gcp lab of stack {settings.stack} is not up (state: {backend}); `lab up` starts it")
    return False
