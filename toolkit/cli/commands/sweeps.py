"""`lab sweeps`: the studies of the lab, with their trials, best value and last activity."""

from __future__ import annotations

import json

from toolkit.cli import options
from toolkit.console import out
from toolkit.sweeps import studies


def sweeps(
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
    as_json: options.Json = False,
) -> None:
    """List the sweeps (Optuna studies): trials, best value, last activity."""
    from toolkit import labs

    lab = labs.open_lab(stack_name, local=local, target=options.target_name(target))
    with lab.study_storage() as storage:
        found = studies.summaries(storage)
    if as_json:
        out().print_json(json.dumps([s.__dict__ for s in found], default=str))
        return
    from rich.table import Table

    table = Table(title="sweeps", title_justify="left")
    for column in ("sweep", "direction", "trials", "complete", "failed", "best", "last activity"):
        table.add_column(column)
    for s in found:
        last = s.last_activity.strftime("%Y-%m-%d %H:%M") if s.last_activity else "-"
        best = "-" if s.best is None else f"{s.best:.6g}"
        table.add_row(s.name, s.direction, str(s.trials), str(s.complete), str(s.failed), best, last)
    out().print(table)
