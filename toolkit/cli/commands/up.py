"""`lab up`: start the lab (on its target) and print where its services answer."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Annotated

import typer

from toolkit.cli import options
from toolkit.config import schema
from toolkit.tracker import dashboard

if TYPE_CHECKING:
    from toolkit.console import Ui
    from toolkit.labs.base import Lab, Report, UpRequest

DEFAULT_JUPYTER_PORT = 8888


def up(
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="MLflow's port.")] = schema.MLFLOW_PORT,
    jupyter_port: Annotated[
        int, typer.Option("--jupyter-port", min=1, max=65535, help="JupyterLab's port.")
    ] = DEFAULT_JUPYTER_PORT,
    dashboard_port: Annotated[
        int | None,
        typer.Option(
            "--dashboard-port",
            min=1,
            max=65535,
            help=f"Local: optuna-dashboard's port [default: {dashboard.DEFAULT_PORT}, or a free one if taken].",
            show_default=False,
        ),
    ] = None,
    no_jupyter: Annotated[bool, typer.Option("--no-jupyter", help="Start the tracker only.")] = False,
    yes: options.Yes = False,
    preview: Annotated[
        bool,
        typer.Option(
            "--preview",
            help="Show what `up` would do and change nothing: local, the services and their ports; ssh, the hosts "
            "it would configure (none is reached); gcp, what Pulumi would change and the cost per hour. A budget "
            "refusal is shown as what `up` would do (exit 0).",
        ),
    ] = False,
    fallback_on_demand: Annotated[
        bool,
        typer.Option(
            "--fallback-on-demand", help="gcp: use standard (on-demand) workers when no zone has spot capacity."
        ),
    ] = False,
    budget: Annotated[
        float | None,
        typer.Option("--budget", min=0.0, help="This budget period's budget in USD (over lab:budgetUsd)."),
    ] = None,
    as_json: options.Json = False,
) -> None:
    """Start the lab: the MLflow tracker (restored from the latest backup when it has no DB yet), the sweeps'
    dashboard (optuna-dashboard) and JupyterLab, each answering before this returns. Local: all on
    127.0.0.1. ssh: the hosts are configured by the playbooks (a second run changes nothing); the dashboard
    listens on the tracker's 127.0.0.1 (`lab tunnel` reaches it). gcp: Pulumi creates (or converges) the VMs
    after a preview with the cost per hour and a confirmation (--yes skips it), then the same. With lab:budgetUsd
    it shows the period's spend and what is left, and refuses to start once the budget is spent (--budget USD
    gives this period a budget); the budget guard starts with the lab."""
    from toolkit import labs
    from toolkit.budget import ledger, tracker
    from toolkit.budget.spend import Limits
    from toolkit.cli.render import show
    from toolkit.console import Ui
    from toolkit.cost import uptime
    from toolkit.errors import LabError
    from toolkit.labs.base import UpRequest

    ui = Ui(json=as_json, yes=yes)
    lab = labs.open_lab(stack_name, local=local, target=options.target_name(target), ui=ui)
    request = UpRequest(
        port,
        jupyter_port,
        no_jupyter,
        preview=preview,
        fallback_on_demand=fallback_on_demand,
        dashboard_port=dashboard_port,
    )
    if preview:
        show(_preview(lab, request, ui, budget), as_json)
        return
    with contextlib.suppress(LabError):  # ssh, gcp: the tracker's guard stopped the lab (a lab down: nothing)
        ledger.sync(lab)
    kept = ledger.before_up(lab.settings, budget)  # refused here when the budget is spent
    ledger.after_up(lab.settings, kept)  # before the guard starts with the lab: it reads this period
    report = lab.up(request, ui)
    try:  # also without limits: a guard handed none stops nothing
        lab.hand_budget(tracker.handed(Limits.of(lab.settings), kept, uptime.periods(lab.stack), lab.budget_workers()))
    except LabError as exc:
        report.lines.append(f"warning: the budget guard was not handed the budget: {exc.one_line()}")
    if Limits.of(lab.settings).any:
        found = ledger.verdict(lab.settings)
        report.document["budget"] = found.as_dict()
        report.lines.append(found.line())
    show(report, as_json)


def _preview(lab: Lab, request: UpRequest, ui: Ui, budget: float | None) -> Report:
    """`lab up --preview`: what `up` would do, changing nothing (the lab's own preview); the refusal `up` would give
    for the budget is part of it (`refused`), and the preview still exits 0."""
    from toolkit.budget import ledger
    from toolkit.errors import LabError

    try:
        ledger.before_up(lab.settings, budget)  # reads the records, writes nothing
        refusal = None
    except LabError as exc:
        refusal = exc.one_line()
    report = lab.up(request, ui)
    report.document["refused"] = refusal
    if refusal:
        report.lines.append(f"`lab up` would refuse: {refusal}")
    return report
