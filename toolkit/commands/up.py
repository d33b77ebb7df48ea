"""`lab up`: start the lab and print its URLs (the local target: MLflow and JupyterLab on this machine)."""

from __future__ import annotations

from typing import Annotated

import typer

from toolkit import local_lab, options, schema, targets
from toolkit.console import err, out


def up(
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="MLflow's port.")] = schema.MLFLOW_PORT,
    jupyter_port: Annotated[int, typer.Option("--jupyter-port", min=1, max=65535, help="JupyterLab's port.")] = (
        local_lab.DEFAULT_JUPYTER_PORT
    ),
    no_jupyter: Annotated[bool, typer.Option("--no-jupyter", help="Start the tracker only.")] = False,
) -> None:
    """Start the lab: the MLflow tracker (restored from the latest backup when it has no DB yet) and
    JupyterLab, both on 127.0.0.1, each answering before this returns."""
    targets.require_local(targets.choose(stack_name, local, target), "up")
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
