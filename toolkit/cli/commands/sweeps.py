"""`lab sweeps`: the studies of the lab, with their trials, best value and last activity."""

from __future__ import annotations

import json

from toolkit.cli import options
from toolkit.console import err, out
from toolkit.errors import LabError
from toolkit.sweeps import studies


def sweeps(
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
    as_json: options.Json = False,
) -> None:
    """List the sweeps (Optuna studies): which run now (detached), trials, best value, last activity."""
    from toolkit import labs

    lab = labs.open_lab(stack_name, local=local, target=options.target_name(target))
    with lab.study_storage() as storage:
        found = studies.summaries(storage)
    try:
        detached = {str(s["name"]): s for s in lab.sweep_host().listing()}
    except LabError as exc:
        err().print(f"cannot tell which sweeps run: {exc.one_line()}")
        detached = {}
    if as_json:
        documents = [{**s.__dict__, "status": detached.get(s.name, {}).get("status")} for s in found]
        out().print_json(json.dumps(documents, default=str))
        return
    from rich.table import Table

    table = Table(title="sweeps", title_justify="left")
    for column in ("sweep", "status", "direction", "trials", "complete", "failed", "best", "last activity"):
        table.add_column(column)
    for s in found:
        last = s.last_activity.strftime("%Y-%m-%d %H:%M") if s.last_activity else "-"
        best = "-" if s.best is None else f"{s.best:.6g}"
        status = str(detached.get(s.name, {}).get("status") or "-")
        table.add_row(s.name, status, s.direction, str(s.trials), str(s.complete), str(s.failed), best, last)
    out().print(table)
