"""`lab sweep stop NAME`: stop a sweep as Ctrl-C does: running trials interrupted, their parameters queued."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from toolkit.cli import options
from toolkit.console import err, out


def stop(
    name: Annotated[str, typer.Argument(help="The sweep (its study's name).")],
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
    as_json: options.Json = False,
) -> None:
    """Stop a running sweep as Ctrl-C does: its running trials are stopped, marked interrupted and their parameters
    queued; the same `lab dispatch` resumes it."""
    from toolkit import labs
    from toolkit.sweeps import hosting, service

    service.check_name(name)
    lab = labs.open_lab(stack_name, local=local, target=options.target_name(target))
    host = hosting.holding(lab.sweep_hosts(), name)  # a detached sweep's record, or a terminal's here
    stopped = host.stop(name, lambda line: err().print(line))
    state = host.state(name) if stopped else None
    if as_json:
        out().print_json(json.dumps({"sweep": name, "stopped": stopped, "state": state}, default=str))
        return
    if not stopped:
        out().print(f"nothing to do: sweep {name!r} is not running")
        return
    interrupted = (state or {}).get("interrupted", 0)
    out().print(
        f"sweep {name!r} stopped: {interrupted} running trial{'s' * (interrupted != 1)} interrupted and queued; "
        f"`lab dispatch` with --study {name} resumes it"
    )
