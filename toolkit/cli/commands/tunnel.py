"""`lab tunnel`: MLflow and each worker's JupyterLab on local ports, over SSH, until Ctrl-C."""

from __future__ import annotations

import contextlib
import subprocess
import threading
from typing import Annotated

import typer

from toolkit.cli import options
from toolkit.config import schema
from toolkit.console import err, out
from toolkit.errors import LabError
from toolkit.labs import choose as targets


def tunnel(
    mlflow_port: Annotated[
        int, typer.Option("--mlflow-port", min=1, max=65535, help="Local port for MLflow.")
    ] = schema.MLFLOW_PORT,
    jupyter_port: Annotated[
        int, typer.Option("--jupyter-port", min=1, max=65535, help="Local port of the first worker's Jupyter.")
    ] = 8888,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
) -> None:
    """Forward the tracker's MLflow and every worker's JupyterLab to ports on 127.0.0.1 and print the
    URLs; Ctrl-C closes them (exit 0)."""
    from toolkit.hosts import ssh as remote
    from toolkit.labs import ssh as remote_lab
    from toolkit.tracker import services

    chosen = targets.choose(stack_name, False, target)
    if chosen == "local":
        raise LabError("the local lab needs no tunnel: its services already listen on 127.0.0.1", hint="`lab status`")
    targets.require(chosen, "tunnel", supported=("ssh", "gcp"))
    lab = remote_lab.open_lab(stack_name, chosen)  # says which workers are stopped: they get no tunnel
    facts = remote_lab.tracker_facts(lab)
    plan = [("MLflow", lab.tracker, mlflow_port, facts.get("mlflow_bind", "127.0.0.1"), schema.MLFLOW_PORT)]
    plan += [
        (f"Jupyter on {w.name}", w, jupyter_port + i, "127.0.0.1", remote_lab.JUPYTER_PORT)
        for i, w in enumerate(lab.workers)
    ]
    for what, _, port, _, _ in plan:
        holder = services.port_holder(port)
        if holder:
            raise LabError(
                f"local port {port} (for {what}) is in use by {holder}",
                hint="stop that process or choose another port with --mlflow-port / --jupyter-port",
            )
    opened: list[subprocess.Popen] = []
    try:
        for what, host, port, address, remote_port in plan:
            opened.append(remote.forward(lab.access, host, port, address, remote_port))
            if host.role == remote.WORKER:  # each worker has its own token
                out().print(f"{what:<22} http://127.0.0.1:{port}/lab  (token: `cat {lab.token_file(host)}`)")
            else:
                out().print(f"{what:<22} http://127.0.0.1:{port}")
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
