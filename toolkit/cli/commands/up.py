"""`lab up`: start the lab and print its URLs (the local target: MLflow and JupyterLab on this machine)."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from toolkit.cli import options
from toolkit.config import schema
from toolkit.console import err, out
from toolkit.errors import LabError
from toolkit.labs import choose as targets
from toolkit.labs import local as local_lab


def up(
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="MLflow's port.")] = schema.MLFLOW_PORT,
    jupyter_port: Annotated[int, typer.Option("--jupyter-port", min=1, max=65535, help="JupyterLab's port.")] = (
        local_lab.DEFAULT_JUPYTER_PORT
    ),
    no_jupyter: Annotated[bool, typer.Option("--no-jupyter", help="Start the tracker only.")] = False,
    yes: options.Yes = False,
    preview: Annotated[
        bool, typer.Option("--preview", help="gcp: show what would change and the cost per hour, then stop.")
    ] = False,
    fallback_on_demand: Annotated[
        bool,
        typer.Option(
            "--fallback-on-demand", help="gcp: use standard (on-demand) workers when no zone has spot capacity."
        ),
    ] = False,
    as_json: options.Json = False,
) -> None:
    """Start the lab: the MLflow tracker (restored from the latest backup when it has no DB yet) and
    JupyterLab, each answering before this returns. Local: both on 127.0.0.1. ssh: the hosts are
    configured by the playbooks (a second run changes nothing). gcp: Pulumi creates (or converges) the
    VMs after a preview with the cost per hour and a confirmation (--yes skips it), then the same."""
    chosen = targets.choose(stack_name, local, target)
    targets.require(chosen, "up")
    if chosen == "gcp":
        stages = _provision_gcp(stack_name, yes, preview, fallback_on_demand, as_json)
        if stages is not None:
            _up_remote(stack_name, chosen, as_json, stages)
        return
    if chosen != "local":
        _up_remote(stack_name, chosen, as_json)
        return
    lab = local_lab.open_lab(stack_name)
    say = err().print
    mlflow = local_lab.running(lab, local_lab.MLFLOW, say)
    jupyter = local_lab.running(lab, local_lab.JUPYTER, say)
    if mlflow and (jupyter or no_jupyter):
        out().print("the lab is already up; nothing changed")
    else:
        if mlflow is None:
            local_lab.restore_if_empty(lab, say)
            mlflow = local_lab.start_mlflow(lab, port, say)
        if jupyter is None and not no_jupyter:
            jupyter = local_lab.start_jupyter(lab, jupyter_port, say)
    out().print(f"MLflow   {mlflow.url}")
    if jupyter:
        out().print(f"Jupyter  {jupyter.url}  (token: `cat {lab.token_file}`)")
    out().print(f"state    {lab.root}")


def _provision_gcp(
    stack_name: str, yes: bool, preview_only: bool, fallback_on_demand: bool, as_json: bool
) -> dict[str, float] | None:
    """Pulumi's part of `lab up` on gcp; the stages' durations, or None after --preview."""
    from toolkit.config import paths
    from toolkit.gcp import pulumi_engine, pulumi_state
    from toolkit.labs import gcp as gcp_lab
    from toolkit.labs import ssh as remote_lab

    say = err().print
    settings = gcp_lab.settings_of(stack_name, warn=say)

    def show(plan: pulumi_engine.Plan, lines: list, total: float) -> None:
        if as_json and preview_only:
            document = {
                "stack": settings.stack,
                "changes": plan.counts,
                "steps": [{"op": op, "type": kind, "name": name} for op, kind, name in plan.steps],
                "cost_per_hour_usd": round(total, 4),
                "priced": [line.as_dict() for line in lines],
            }
            out().print_json(json.dumps(document))
            return
        show_to = err() if as_json else out()
        show_to.print(f"preview of {settings.stack}: {gcp_lab.plan_summary(plan)}")
        # One line per resource that changes, with Pulumi's own marks (pkg/resource/deploy/step.go RawPrefix).
        marks = {"create": "+ ", "update": "~ ", "replace": "+-", "delete": "- ", "import": "= "}
        for op, kind, name in plan.steps:
            show_to.print(f"  {marks.get(op, '  ')} {op:8} {kind.split(':')[-1]:12} {name}", highlight=False)
        if not plan.steps:
            show_to.print("  no changes", highlight=False)
        for line in lines:
            show_to.print(f"  {line.describe()}")
        show_to.print(f"estimated cost while up: ${total:.2f}/hour")

    backend = pulumi_state.backend_url(settings)
    if backend.startswith("gs://"):
        from toolkit.gcp import state_bucket

        state_bucket.ensure_state_bucket(
            backend.removeprefix("gs://").split("/", 1)[0], settings.project or "", settings.region or "US"
        )
    with gcp_lab.stack_lock(settings, "up"):
        done = gcp_lab.provision(
            settings,
            pulumi_engine.AutomationEngine(settings, paths.project_dir()),
            confirm=gcp_lab.confirm_with(yes),
            say=say,
            show=show,
            preview_only=preview_only,
            fallback_on_demand=fallback_on_demand,
        )
    if done is None:
        return None
    gcp_lab.record_up(settings, done)
    lab = remote_lab.open_lab(stack_name, "gcp")
    started = time.monotonic()
    remote_lab.forget_changed_host_keys(lab)
    for host in lab.hosts:
        say(f"waiting for SSH on {host.name} ({host.address})")
        remote_lab.wait_for_ssh(lab, host, timeout=600)
    done.stages["wait for SSH"] = time.monotonic() - started
    return done.stages


def _up_remote(stack_name: str, target: str, as_json: bool, stages: dict[str, float] | None = None) -> None:
    from toolkit.hosts import configure
    from toolkit.labs import ssh as remote_lab

    say = err().print
    started = time.monotonic()
    lab = remote_lab.open_lab(stack_name, target)
    stages = dict(stages or {})
    before = sum(stages.values())  # gcp: preview, pulumi up, wait for SSH
    unreachable = {n: why for n, why in remote_lab.reachable(lab).items() if why}
    stages["reach hosts"] = time.monotonic() - started
    if unreachable:
        name, why = next(iter(unreachable.items()))
        raise LabError(why or f"cannot reach {name}", hint="start the machine, or fix the stack's hosts")
    if as_json:
        report, restored = remote_lab.configure_hosts(lab, say, lambda report: None)
    else:
        from rich.live import Live

        with Live(console=err(), refresh_per_second=4, transient=False) as live:
            report, restored = remote_lab.configure_hosts(lab, say, lambda r: live.update(configure.table(r)))
    stages["configure"] = report.seconds
    facts = remote_lab.tracker_facts(lab)
    stages["total"] = before + time.monotonic() - started
    if as_json:
        document = {
            "stack": lab.stack,
            "target": target,
            "configure": report.as_dict(),
            "restored": restored.manifest.id if restored else None,
            "tracker": facts,
            "stages_s": {k: round(v, 1) for k, v in stages.items()},
        }
        out().print_json(json.dumps(document))
        return
    changed = report.changed
    out().print(
        f"{len(lab.hosts)} hosts configured: "
        + ("nothing changed" if changed == 0 else f"{changed} change{'s' * (changed != 1)}")
    )
    if restored:
        out().print(f"tracker restored from backup {restored.manifest.id} (if it had no DB yet)")
    out().print(f"MLflow   {facts.get('mlflow_url')}  (inside the lab's network)")
    out().print("reach MLflow and Jupyter from here with `lab tunnel`")
    out().print("stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()))
