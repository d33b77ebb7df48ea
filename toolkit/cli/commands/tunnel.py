"""`lab tunnel`: MLflow, the sweeps' dashboard and each worker's JupyterLab on local ports, over SSH, until Ctrl-C."""

from __future__ import annotations

import contextlib
import subprocess
import threading
from typing import Annotated

import typer

from toolkit.cli import options
from toolkit.config import schema
from toolkit.tracker import dashboard


def tunnel(
    mlflow_port: Annotated[
        int, typer.Option("--mlflow-port", min=1, max=65535, help="Local port for MLflow.")
    ] = schema.MLFLOW_PORT,
    jupyter_port: Annotated[
        int, typer.Option("--jupyter-port", min=1, max=65535, help="Local port of the first worker's Jupyter.")
    ] = 8888,
    dashboard_port: Annotated[
        int, typer.Option("--dashboard-port", min=1, max=65535, help="Local port for the sweeps' optuna-dashboard.")
    ] = dashboard.DEFAULT_PORT,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
) -> None:
    """Forward the tracker's MLflow and optuna-dashboard and every worker's JupyterLab to ports on 127.0.0.1
    and print the URLs; Ctrl-C closes them (exit 0)."""
    from toolkit import labs
    from toolkit.console import Ui, err, out
    from toolkit.errors import LabError
    from toolkit.tracker import services

    ui = Ui()
    lab = labs.open_lab(stack_name, target=options.target_name(target), ui=ui)
    plan = lab.forwards(mlflow_port, jupyter_port, dashboard_port)  # stopped workers get no tunnel (said once)
    for forward in plan:
        holder = services.port_holder(forward.local_port)
        if holder:
            raise LabError(
                f"local port {forward.local_port} (for {forward.what}) is in use by {holder}",
                hint="stop that process or choose another port with --mlflow-port / --dashboard-port / --jupyter-port",
            )
    opened: list[subprocess.Popen] = []
    try:
        for forward in plan:
            opened.append(lab.open_forward(forward))
            url = f"http://127.0.0.1:{forward.local_port}{forward.suffix}"
            token = f"  (token: `cat {forward.note}`)" if forward.note else ""
            out().print(f"{forward.what:<22} {url}{token}")
        err().print("tunnels open; Ctrl-C closes them")
        stopped = threading.Event()
        try:
            while not stopped.wait(1.0):
                gone = [p for p in opened if p.poll() is not None]
                if gone:
                    raise LabError("a tunnel closed (its host went away?)", hint="run `lab tunnel` again")
        except KeyboardInterrupt:
            err().print("tunnels closed")
    finally:
        for process in opened:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        for process in opened:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
