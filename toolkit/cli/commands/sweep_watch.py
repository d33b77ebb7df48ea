"""`lab sweep watch NAME`: a running sweep, live, from anywhere; Ctrl-C leaves it running."""

from __future__ import annotations

import json
import subprocess
from typing import Annotated

import typer

from toolkit.cli import options
from toolkit.console import err, out
from toolkit.console import live as live_view
from toolkit.errors import LabError


def watch(
    name: Annotated[str, typer.Argument(help="The sweep (its study's name).")],
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
    as_json: options.Json = False,
) -> None:
    """Watch a sweep live: slots, running trials and their time, done and failed counts, the best so far, each
    worker's GPUs. Ctrl-C stops watching; the sweep goes on (`lab sweep stop` stops it)."""
    from toolkit import labs
    from toolkit.cli import sweep_view
    from toolkit.sweeps import hosting, service

    service.check_name(name)
    lab = labs.open_lab(stack_name, local=local, target=options.target_name(target))
    host = hosting.holding(lab.sweep_hosts(), name)  # a detached sweep's record, or a terminal's here
    process = subprocess.Popen(host.command("watch", "--name", name), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None  # noqa: S101
    state: dict = {}
    try:
        with live_view(console=out(), refresh_per_second=4, transient=False, auto_refresh=not as_json) as live:
            for line in process.stdout:
                state = json.loads(line) or {}
                if as_json:
                    out().print_json(json.dumps(state, default=str))
                else:
                    live.update(sweep_view.table(state))
    except KeyboardInterrupt:
        process.terminate()
        err().print(f"stopped watching; sweep {name!r} goes on (`lab sweep stop {name}` stops it)")
        return
    finally:
        if process.poll() is None:
            process.terminate()
    if process.wait() != 0:
        said = process.stderr.read().decode(errors="replace").strip().splitlines()
        raise LabError(said[-1].removeprefix("error: ") if said else f"cannot watch sweep {name!r} {host.where}")
    if state.get("status") == "failed":
        raise LabError(f"sweep {name!r} failed: {state.get('error', '?')}", hint=f"`lab sweep logs {name}`")
