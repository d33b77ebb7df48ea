"""`lab up`: start the lab and print its URLs (the local target: MLflow and JupyterLab on this machine)."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from toolkit import local_lab, options, schema, targets
from toolkit.console import err, out
from toolkit.errors import LabError


def up(
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="MLflow's port.")] = schema.MLFLOW_PORT,
    jupyter_port: Annotated[int, typer.Option("--jupyter-port", min=1, max=65535, help="JupyterLab's port.")] = (
        local_lab.DEFAULT_JUPYTER_PORT
    ),
    no_jupyter: Annotated[bool, typer.Option("--no-jupyter", help="Start the tracker only.")] = False,
    as_json: options.Json = False,
) -> None:
    """Start the lab: the MLflow tracker (restored from the latest backup when it has no DB yet) and
    JupyterLab, each answering before this returns. Local: both on 127.0.0.1. ssh: the hosts are
    configured by the playbooks (a second run changes nothing)."""
    chosen = targets.choose(stack_name, local, target)
    targets.require(chosen, "up")
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


def _up_remote(stack_name: str, target: str, as_json: bool) -> None:
    from toolkit import configure, remote_lab

    say = err().print
    started = time.monotonic()
    lab = remote_lab.open_lab(stack_name, target)
    stages: dict[str, float] = {}
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
    stages["total"] = time.monotonic() - started
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
