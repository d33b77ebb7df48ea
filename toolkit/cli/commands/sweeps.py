"""`lab sweeps`: the studies of the lab, with their trials, best value and last activity."""

from __future__ import annotations

import json

from toolkit.cli import options
from toolkit.console import err, out
from toolkit.sweeps import hosting, studies


def sweeps(
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
    as_json: options.Json = False,
) -> None:
    """List the sweeps (Optuna studies): how each one ran last (running, finished, stopped, failed; detached or in
    a terminal), trials, how many completed, failed or were interrupted (Ctrl-C, `lab sweep stop`, the budget guard:
    queued to run again, not failed), best value, last activity."""
    from toolkit import labs

    lab = labs.open_lab(stack_name, local=local, target=options.target_name(target))
    with lab.study_storage() as storage:
        found = studies.summaries(storage)
    records = hosting.listing(lab.sweep_hosts(), lambda line: err().print(line, markup=False, highlight=False))
    if as_json:
        documents = [{**s.__dict__, "status": records.get(s.name, {}).get("status")} for s in found]
        out().print_json(json.dumps(documents, default=str))
        return
    from rich.table import Table

    table = Table(title="sweeps", title_justify="left")
    columns = ("sweep", "status", "direction", "trials", "complete", "failed", "interrupted", "best", "last activity")
    for column in columns:
        table.add_column(column)
    for s in found:
        last = s.last_activity.strftime("%Y-%m-%d %H:%M") if s.last_activity else "-"
        best = "-" if s.best is None else f"{s.best:.6g}"
        status = str(records.get(s.name, {}).get("status") or "-")
        counts = (str(s.trials), str(s.complete), str(s.failed), str(s.interrupted))
        table.add_row(s.name, status, s.direction, *counts, best, last)
    out().print(table)
