"""`lab status`: each component's state, URL and uptime, and how old the latest backup is."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from toolkit.cli import options
from toolkit.console import err, out
from toolkit.labs import choose as targets
from toolkit.labs import local as local_lab
from toolkit.tracker import backups


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

    from toolkit.config import paths
    from toolkit.errors import LabError
    from toolkit.hosts import ssh as remote
    from toolkit.labs import ssh as remote_lab

    if target == "gcp" and not _gcp_is_up(stack_name, as_json):
        return
    lab: remote_lab.RemoteLab | None
    if target == "gcp":
        # The VMs as they are now (Compute API): a stopped worker is shown as stopped, not as unreachable.
        settings = remote_lab.settings_for(stack_name, target)
        view = remote_lab.gcp_hosts(settings, err().print)
        lab = remote_lab.gcp_lab_of(settings, view, err().print) if view.tracker.usable else None
        states = view.states
        stack, root, bucket = settings.stack, paths.stack_home(settings.stack), view.bucket
    else:
        lab = remote_lab.open_lab(stack_name, target)
        view, states = None, ()
        stack, root, bucket = lab.stack, lab.root, lab.bucket

    def look(host: remote.Host) -> dict[str, Any]:
        info: dict[str, Any] = {"role": host.role, "address": host.address, "state": "running"}
        assert lab is not None  # noqa: S101 -- only usable hosts are looked at, and they have a lab
        try:
            info["services"] = remote_lab.units_state(lab, host)
            info["reachable"] = True
        except LabError as exc:
            info.update(reachable=False, error=exc.one_line(), services={}, state="unreachable")
        return info

    usable = lab.hosts if lab else ()
    with ThreadPoolExecutor(max_workers=max(len(usable), 1)) as pool:
        hosts = dict(zip([h.name for h in usable], pool.map(look, usable), strict=True))
    for host_state in states:
        name = host_state.host.name
        if name in hosts:
            hosts[name].update(instance=host_state.instance, zone=host_state.zone, status=host_state.status)
            continue
        hosts[name] = {
            "role": host_state.host.role,
            "address": host_state.host.address or None,
            "state": "stopped" if "stopped" in host_state.describe() else host_state.status.lower(),
            "status": host_state.status,
            "instance": host_state.instance,
            "zone": host_state.zone,
            "reachable": False,
            "services": {},
            "error": host_state.describe(),
        }
    order = [s.host.name for s in states] or list(hosts)
    hosts = {name: hosts[name] for name in order if name in hosts}
    tracker: dict[str, Any] = {}
    if lab is not None and hosts[lab.tracker.name]["reachable"]:
        try:
            tracker = {**remote_lab.tracker_facts(lab), **json.loads(remote_lab.agent(lab, "status"))}
        except LabError as exc:
            tracker = {"error": exc.one_line()}
    document = {
        "stack": stack,
        "target": target,
        "state_dir": str(root),
        "hosts": hosts,
        "tracker": tracker,
        "backups": _backup_info(root / "backups"),
        "bucket": bucket,
    }
    if view is not None:
        document["addresses"] = "compute api" if view.live else "last lab up (could not ask GCP: " + view.note + ")"
    if as_json:
        out().print_json(json.dumps(document))
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"lab {stack} ({target})", title_justify="left")
    for column in ("host", "role", "address", "services"):
        table.add_column(column)
    for name, info in hosts.items():
        if info["state"] == "stopped":
            services = f"[dim]stopped[/dim]: {escape(info['error'])}"
        elif not info["reachable"] and info["state"] != "unreachable":
            services = f"[yellow]{escape(info['state'])}[/yellow]: {escape(info['error'])}"
        elif not info["reachable"]:
            services = f"[red]unreachable[/red]: {escape(info['error'])}"
        else:
            services = ", ".join(
                f"{unit.split('.')[0]} "
                + ("[green]active[/green]" if state == "active" else f"[yellow]{state}[/yellow]")
                for unit, state in info["services"].items()
            )
        table.add_row(name, info["role"], info["address"] or "-", services)
    out().print(table)
    if view is not None and not view.live:
        out().print(f"addresses from the last `lab up` (GCP could not be asked: {escape(view.note)})", highlight=False)
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
    from toolkit.gcp import pulumi_state
    from toolkit.labs import gcp as gcp_lab

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
