"""`lab dispatch`: a sweep of a notebook on the lab's slots, chosen by Optuna, recorded in MLflow."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from toolkit.cli import options
from toolkit.console import err, out
from toolkit.errors import LabError

if TYPE_CHECKING:
    from rich.table import Table

    from toolkit.sweeps.dispatch import Sweep, SweepSpec

DEFAULT_OUTPUT = "out/{study}/{notebook}-{trial}-{run_id}.ipynb"


def _table(sweep: Sweep, started: float) -> Table:
    from rich.table import Table

    progress = sweep.progress
    assert progress is not None  # noqa: S101 -- the sweep is open before anything is shown
    done, failed = progress.count("COMPLETE"), progress.count("FAIL") + progress.count("INTERRUPTED")
    running = [r for r in progress.results if r.state == "RUNNING"]
    best = "-" if progress.best is None else f"{progress.best:.6g}"
    table = Table(
        title=f"{done} done, {len(running)} running, {failed} failed of {progress.planned} "
        f"(+{progress.already} earlier); best {best}; {time.monotonic() - started:.0f} s",
        title_justify="left",
    )
    for column in ("slot", "trial", "elapsed", "params"):
        table.add_column(column)
    busy = {r.slot: r for r in running}
    for slot in sweep.slots:
        result = busy.get(slot.name)
        if result:
            params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.params.items())
            table.add_row(slot.name, str(result.number), f"{time.monotonic() - result.started:.0f} s", params)
        else:
            table.add_row(slot.name, "-", "-", "idle")
    return table


def dispatch(
    notebook: Annotated[Path, typer.Argument(help="The notebook to run (a cell tagged `parameters`).")],
    space_file: Annotated[Path, typer.Option("--space", help="The search-space YAML file.")],
    trials: Annotated[int, typer.Option("--trials", "-n", min=1, help="Trials in the study, in all.")] = 10,
    parallel: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--parallel", "-j", min=1, help="Trials at once (slots); default 1 locally, every slot remotely."),
    ] = None,
    study: Annotated[
        Optional[str],  # noqa: UP045 -- typer reads the annotation at run time on Python 3.10 too
        typer.Option("--study", help="Study name; the same name resumes it. Default: the notebook's name."),
    ] = None,
    timeout: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option("--timeout", min=1, help="Seconds a trial may run before it is stopped and failed."),
    ] = None,
    output: Annotated[
        str, typer.Option("--output", "-o", help="Where executed notebooks go: {study}, {trial}, {run_id}, {notebook}.")
    ] = DEFAULT_OUTPUT,
    gpus: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--gpus", help="GPU ids, e.g. 0,1: each slot sees one (CUDA_VISIBLE_DEVICES), lab:runsPerGpu slots per GPU."
        ),
    ] = None,
    as_json: options.Json = False,
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
) -> None:
    """Run a sweep: Optuna proposes parameters, papermill runs the notebook on parallel slots, MLflow
    records every trial. Exit 0 when at least one trial completed."""
    from toolkit import labs
    from toolkit.console import Ui
    from toolkit.sweeps import dispatch as engine
    from toolkit.sweeps import space

    if not notebook.is_file():
        raise LabError(f"no notebook {notebook}", hint="pass the path of an .ipynb file")
    searched = space.load(space_file)
    gpu_list = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else None
    ui = Ui(json=as_json)
    lab = labs.open_lab(stack_name, local=local, target=options.target_name(target), ui=ui)
    with contextlib.ExitStack() as exits:
        place = lab.sweep_place(exits, parallel, gpu_list, ui)
        spec = engine.SweepSpec(
            notebook=notebook.resolve(),
            space=searched,
            study=study or notebook.stem,
            trials=trials,
            timeout=timeout,
            output_pattern=output,
            tracking_uri=place.tracking_uri,
            storage_path=place.storage_path,
            grpc_port=place.grpc_port,
        )
        _sweep(spec, place.slots, as_json)


def _total_cost(results: list) -> float | None:
    costs = [r.cost_usd for r in results if r.cost_usd is not None]
    return round(sum(costs), 6) if costs else None


def _sweep(spec: SweepSpec, slot_list: list, as_json: bool) -> None:
    from toolkit.sweeps import dispatch as engine

    output = spec.output_pattern
    notebook = spec.notebook
    engine.output_path(output, study=spec.study, trial=0, run_id="x", notebook=notebook)  # fail fast on typos
    with engine.study_lock(spec.storage_path, spec.study):
        sweep = engine.Sweep(spec, slot_list)
        progress = sweep.open()
        started = time.monotonic()
        wall = 0.0
        if progress.planned == 0:
            err().print(f"nothing to do: study {spec.study!r} already has {progress.already} finished trials")
        elif as_json:
            sweep.run()
        else:
            from rich.live import Live

            with Live(_table(sweep, started), console=err(), refresh_per_second=4, transient=False) as live:
                try:
                    sweep.run(on_change=lambda: live.update(_table(sweep, started)))
                except KeyboardInterrupt:
                    stopped = progress.count("INTERRUPTED")
                    err().print(
                        f"stopped {stopped} running trial{'s' * (stopped != 1)}, marked them interrupted "
                        "and queued their parameters; run the same command again to resume"
                    )
                    raise
        wall = time.monotonic() - started
        best = sweep.best()
    summary = {
        "study": spec.study,
        "tracking_uri": spec.tracking_uri,
        "experiment_id": sweep.experiment_id,
        "trials": [
            {
                "number": r.number,
                "state": r.state,
                "value": r.value,
                "params": r.params,
                "run_id": r.run_id,
                "slot": r.slot,
                "attempts": r.attempts,
                "seconds": round(r.seconds, 3),
                "cost_usd": None if r.cost_usd is None else round(r.cost_usd, 6),
                "slot_start": round(r.slot_start - started, 3),
                "slot_end": round(r.slot_end - started, 3),
                "output": r.output,
                "error": r.error,
            }
            for r in progress.results
        ],
        "slots": len(slot_list),
        "wall_s": round(wall, 3),
        "completed": progress.count("COMPLETE"),
        "failed": progress.count("FAIL"),
        "best": best,
        "cost_usd": _total_cost(progress.results),
    }
    if as_json:
        out().print_json(json.dumps(summary, default=str))
    else:
        out().print(f"{summary['completed']} completed, {summary['failed']} failed this run")
        if best:
            out().print(f"best trial {best['trial']}: {spec.space.metric} = {best['value']:.6g} with {best['params']}")
            out().print(f"best run: {best['url']}")
        if summary["cost_usd"] is not None:
            out().print(f"cost of this run's trials: ${summary['cost_usd']:.4f} (`lab cost` for every sweep)")
    if (progress.planned and summary["completed"] == 0) or best is None:
        raise LabError(f"no trial of study {spec.study!r} completed", hint="see each run's lab.error tag in MLflow")
