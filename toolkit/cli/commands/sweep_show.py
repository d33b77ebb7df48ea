"""`lab sweep show NAME`: a sweep's best trials and a parallel-coordinates plot of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from toolkit.cli import options
from toolkit.console import out
from toolkit.sweeps import studies


def show(
    name: Annotated[str, typer.Argument(help="The sweep (study) name.")],
    top: Annotated[int, typer.Option("--top", min=1, help="How many of the best trials to list.")] = 5,
    plot_dir: Annotated[
        Optional[Path],  # noqa: UP045 -- typer reads the annotation at run time on Python 3.10 too
        typer.Option("--plot-dir", help="Where the plot goes (default: out/NAME)."),
    ] = None,
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
    as_json: options.Json = False,
) -> None:
    """Show a sweep's best trials and write a parallel-coordinates plot (HTML, and PNG) of its
    parameters against the objective."""
    from toolkit import labs

    lab = labs.open_lab(stack_name, local=local, target=options.target_name(target))
    with lab.study_storage() as storage:
        study = studies.load(storage, name)
        best = studies.best_trials(study, top)
        written = studies.plot_parallel_coordinates(study, plot_dir or Path("out") / name)
        direction = study.direction.name.lower()
    rows = [
        {"trial": t.number, "value": t.value, "params": t.params, "run_id": t.user_attrs.get("mlflow_run_id")}
        for t in best
    ]
    if as_json:
        out().print_json(json.dumps({"sweep": name, "best": rows, "plots": [str(p) for p in written]}))
        return
    from rich.table import Table

    table = Table(title=f"best trials of {name} ({direction})", title_justify="left")
    for column in ("trial", "value", "params", "run"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            str(row["trial"]),
            f"{row['value']:.6g}",
            ", ".join(f"{k}={v}" for k, v in row["params"].items()),
            row["run_id"] or "-",
        )
    out().print(table)
    for path in written:
        out().print(f"plot: {path}")
