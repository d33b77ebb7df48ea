"""`lab dispatch`: a sweep of a notebook on the lab's slots, chosen by Optuna, recorded in MLflow."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from toolkit.cli import options
from toolkit.console import err, out
from toolkit.errors import LabError
from toolkit.labs import choose as targets
from toolkit.labs import local as local_lab

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
    chosen = targets.choose(stack_name, local, target)
    targets.require(chosen, "dispatch")
    from toolkit.sweeps import dispatch as engine
    from toolkit.sweeps import space

    if not notebook.is_file():
        raise LabError(f"no notebook {notebook}", hint="pass the path of an .ipynb file")
    searched = space.load(space_file)
    gpu_list = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else None
    with contextlib.ExitStack() as stack:
        if chosen == "local":
            slot_list, tracking_uri, storage_path, grpc_port = _local_slots(stack_name, parallel, gpu_list)
        else:
            if gpu_list:
                raise LabError("--gpus is for the local target", hint="remote workers report their own GPUs")
            slot_list, tracking_uri, storage_path, grpc_port = _remote_slots(stack, stack_name, chosen, parallel)
        spec = engine.SweepSpec(
            notebook=notebook.resolve(),
            space=searched,
            study=study or notebook.stem,
            trials=trials,
            timeout=timeout,
            output_pattern=output,
            tracking_uri=tracking_uri,
            storage_path=storage_path,
            grpc_port=grpc_port,
        )
        _sweep(spec, slot_list, as_json)


def _local_slots(stack_name: str, parallel: int | None, gpu_list: list[str] | None) -> tuple[list, str, Path, None]:
    from toolkit.cost import prices
    from toolkit.sweeps import slots

    lab = local_lab.open_lab(stack_name)
    tracker = local_lab.running(lab, local_lab.MLFLOW, err().print)
    if tracker is None:
        raise LabError("the local lab is not up", hint="start it with `lab up --local`")
    slot_list = slots.local_slots(parallel or 1, gpu_list, lab.settings.runs_per_gpu)
    slots.price_slots(slot_list, lambda _: prices.host_hourly(prices.LOCAL_HOST), lambda _: prices.LOCAL_HOST)
    return slot_list, tracker.url, lab.tracker_dir / "optuna.db", None


def _remote_slots(
    stack: contextlib.ExitStack, stack_name: str, target: str, parallel: int | None
) -> tuple[list, str, Path, int]:
    """The workers' slots, and tunnels to the tracker's MLflow and Optuna storage for the dispatcher."""
    from toolkit.hosts import ssh as remote
    from toolkit.labs import ssh as remote_lab
    from toolkit.sweeps import slots, ssh_slots

    lab = remote_lab.open_lab(stack_name, target)
    if not lab.workers:
        raise LabError("the lab has no workers to run trials on", hint="list them in lab:workerHosts")
    facts = remote_lab.tracker_facts(lab)
    mlflow_port, optuna_port = remote.free_port(), remote.free_port()
    for local_port, address, port in (
        (mlflow_port, facts.get("mlflow_bind", "127.0.0.1"), facts.get("mlflow_port", 5000)),
        (optuna_port, "127.0.0.1", facts.get("optuna_port", remote_lab.OPTUNA_PORT)),
    ):
        tunnel = remote.forward(lab.access, lab.tracker, local_port, address, int(port))
        stack.callback(tunnel.wait, 10)
        stack.callback(tunnel.terminate)
    slot_list = ssh_slots.ssh_slots(lab.access, list(lab.workers), lab.settings.runs_per_gpu)
    if parallel:
        slot_list = slot_list[:parallel]
    slots.price_slots(slot_list, _worker_price(lab.settings, target), lambda slot: slot.host.name)
    return slot_list, f"http://127.0.0.1:{mlflow_port}", lab.root / "sweeps", optuna_port


def _worker_price(settings: Any, target: str) -> Callable[[str], float | None]:
    """A worker's price per hour: the price table's for the lab's gcp workers, `hosts:` for ssh hosts."""
    from dataclasses import replace

    from toolkit.cost import prices
    from toolkit.gcp import pulumi_state

    if target == "gcp":
        state = pulumi_state.read(pulumi_state.backend_url(settings), settings.stack)
        spot = state.outputs.get("worker_spot") if state else None
        if isinstance(spot, bool):  # on-demand after --fallback-on-demand
            settings = replace(settings, spot=spot)
        price = prices.worker_hourly(settings)
        return lambda _: price
    return prices.host_hourly


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
