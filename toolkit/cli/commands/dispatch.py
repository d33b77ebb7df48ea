"""`lab dispatch`: a sweep of a notebook on the lab's slots, chosen by Optuna, recorded in MLflow."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from toolkit.cli import options
from toolkit.console import err, out
from toolkit.errors import LabError

if TYPE_CHECKING:
    from toolkit.budget.watch import Watch
    from toolkit.labs.base import Lab
    from toolkit.sweeps.dispatch import Progress, SweepSpec
    from toolkit.sweeps.space import Space

DEFAULT_OUTPUT = "out/{study}/{notebook}-{trial}-{run_id}.ipynb"


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
    detach: Annotated[
        Optional[bool],  # noqa: UP045
        typer.Option(
            "--detach/--no-detach",
            help="Hand the sweep to the lab (the tracker on ssh/gcp, a process of its own locally) and return: it "
            "goes on without this terminal. Default: on for ssh and gcp, off for local.",
        ),
    ] = None,
    as_json: options.Json = False,
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
) -> None:
    """Run a sweep: Optuna proposes parameters, papermill runs the notebook on parallel slots, MLflow
    records every trial. Exit 0 when at least one trial completed (detached: once the sweep started)."""
    from toolkit import labs
    from toolkit.console import Ui
    from toolkit.sweeps import dispatch as engine
    from toolkit.sweeps import notebook as notebooks
    from toolkit.sweeps import prepare, space

    notebooks.check(notebook)  # before anything is asked of the lab: a script, a file that is not a notebook
    searched = space.load(space_file)
    gpu_list = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else None
    ui = Ui(json=as_json)
    lab = labs.open_lab(stack_name, local=local, target=options.target_name(target), ui=ui)
    if lab.detach_by_default if detach is None else detach:
        if output != DEFAULT_OUTPUT:
            raise LabError(
                "--output is for a sweep run in this terminal",
                hint="a detached sweep keeps each executed notebook in its trial's MLflow run (and in its folder)",
            )
        _detach(
            lab, notebook, space_file, searched, study or notebook.stem, trials, timeout, parallel, gpu_list, as_json
        )
        return
    name = study or notebook.stem
    kept = _record_folder(lab, name)
    with contextlib.ExitStack() as exits:
        place = lab.sweep_place(exits, parallel, gpu_list, ui)
        spec = engine.SweepSpec(
            notebook=notebook.resolve(),
            space=searched,
            study=name,
            trials=trials,
            timeout=timeout,
            output_pattern=output,
            logs=kept / "trials" if kept else None,  # `lab sweep logs NAME --trial N`
            tracking_uri=place.tracking_uri,
            storage_path=place.storage_path,
            grpc_port=place.grpc_port,
            steps=prepare.steps_for(searched, notebook.resolve().parent, place, notebook.resolve()),
        )
        _sweep(spec, place.slots, as_json, _budget_watch(lab), kept)


def _record_folder(lab: Lab, name: str) -> Path | None:
    """Where this terminal's sweep keeps its record (`toolkit.sweeps.record`); None, said, when its name cannot
    name one."""
    from toolkit.sweeps import record

    root = getattr(lab.terminal_sweeps(), "root", None)
    folder = record.folder_for(root, name) if root is not None else None
    if folder is None:
        err().print(
            f"note: {name!r} cannot name a sweep's record, so `lab sweep logs` will not find this sweep; "
            "name it with --study (letters, digits, '.', '_', '-')",
            markup=False,
            highlight=False,
        )
    return folder


def _detach(
    lab: Lab,
    notebook: Path,
    space_file: Path,
    searched: Space,
    name: str,
    trials: int,
    timeout: float | None,
    parallel: int | None,
    gpus: list[str] | None,
    as_json: bool,
) -> None:
    """Hand the sweep to where the lab runs its sweeps, start it there, say how to follow it."""
    import socket

    from toolkit.sweeps import service

    service.check_name(name)
    service.measure(notebook.resolve(), space_file)  # refused before anything is asked of the lab
    doc = {
        "study": name,
        "notebook": notebook.name,
        "trials": trials,
        "timeout": timeout,
        "place": lab.detached_place(parallel, gpus),
        "metric": searched.metric,
        "from": socket.gethostname(),
        "submitted": time.time(),
    }
    data = service.pack(notebook.resolve(), space_file, doc, extra=_stack_requirements(lab, notebook.resolve()))
    host = lab.sweep_host()
    started = time.monotonic()
    host.submit(name, data)
    host.start(name)
    state = host.state(name) or {}
    if as_json:
        document = {"sweep": name, "where": host.where, "bundle_bytes": len(data), "state": state}
        out().print_json(json.dumps(document, default=str))
        return
    out().print(
        f"sweep {name} runs {host.where} ({len(data) / 1024:.0f} KB handed over in {time.monotonic() - started:.1f} s)"
    )
    out().print(f"  watch it:  lab sweep watch {name}")
    out().print(f"  its logs:  lab sweep logs {name} [--trial N] --follow")
    out().print(f"  stop it:   lab sweep stop {name}  (the same dispatch resumes it)")


def _stack_requirements(lab: Lab, notebook: Path) -> dict[str, str]:
    """The stack's lab:requirements files, to go with a detached sweep whose notebook's folder names none (the
    tracker has not the stack's files): the environment is the one the same sweep gets in the terminal."""
    from toolkit.envs import spec as envspec

    if envspec.find(notebook.parent) is not None:
        return {}
    found = envspec.find(notebook.parent, envspec.stack_requirements(lab.settings.requirements))
    return dict(found.files) if found is not None else {}


def _budget_watch(lab: Lab) -> Watch | None:
    """What the sweep learns of the budget guard while it runs (None: the stack has no budget and no hour limit)."""
    from toolkit.budget import watch
    from toolkit.budget.spend import Limits

    if not Limits.of(lab.settings).any:
        return None
    return watch.Watch(lambda: watch.news(lab), lambda line: err().print(line, markup=False, highlight=False))


def _stopped_line(progress: Progress) -> str:
    stopped = progress.count("INTERRUPTED")
    return f"stopped {stopped} running trial{'s' * (stopped != 1)}, marked them interrupted and queued their parameters"


def _sweep(
    spec: SweepSpec, slot_list: list, as_json: bool, budget: Watch | None = None, folder: Path | None = None
) -> None:
    from toolkit.budget import watch as budget_watch
    from toolkit.budget.spend import STOP
    from toolkit.cli import sweep_view
    from toolkit.sweeps import dispatch as engine
    from toolkit.sweeps import record, service

    output = spec.output_pattern
    notebook = spec.notebook
    engine.output_path(output, study=spec.study, trial=0, run_id="x", notebook=notebook)  # fail fast on typos
    # `lab down` stops a terminal's sweep as Ctrl-C does (SIGINT): also one started as a shell's background job or
    # from cron, which comes in with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    kept = record.Kept(folder, spec.study) if folder is not None else contextlib.nullcontext(None)
    with kept as keep, engine.study_lock(spec.storage_path, spec.study):
        sweep = engine.Sweep(spec, slot_list)
        stopped: LabError | None = None  # the budget guard's stop, raised once the summary is out
        changed = keep or (lambda: None)  # the record (`lab sweep logs`, `lab sweeps`) follows the sweep
        try:
            progress = sweep.open()
            started = time.monotonic()
            if keep is not None:
                keep.follow(sweep)

            def view() -> object:
                state = service.snapshot(sweep, started, name=spec.study, status="running")
                return sweep_view.table(budget_watch.merged(state, budget.latest if budget else None))

            if budget is not None and progress.planned:
                budget.start(lambda _: sweep.cancel.set())  # stops as Ctrl-C does: trials interrupted and queued
            if progress.planned == 0:
                err().print(f"nothing to do: study {spec.study!r} already has {progress.already} finished trials")
            elif as_json:
                sweep.run(on_change=changed)
            else:
                from toolkit.console import live as live_view

                with live_view(view(), console=err(), refresh_per_second=4, transient=False) as live:
                    try:
                        sweep.run(on_change=lambda: (changed(), live.update(view())))
                    except KeyboardInterrupt:
                        guard = budget.look() if budget is not None else None
                        if guard is not None and guard.state == STOP:  # the local guard's `lab down` stopped it
                            err().print(f"{guard.line}; {_stopped_line(progress)}", markup=False)
                        else:
                            err().print(f"{_stopped_line(progress)}; run the same command again to resume")
                        raise
            if budget is not None and budget.fired:
                if keep is not None:
                    keep.stopped(f"the budget guard stopped the lab: {budget.fired.get('reason', '?')}")
                stopped = LabError(
                    f"the budget guard stopped the lab: {budget.fired.get('reason', '?')}; {_stopped_line(progress)}",
                    hint="`lab up --budget USD` gives this period more; then the same command resumes the sweep",
                )
        finally:
            if budget is not None:
                budget.stop()
            sweep.close()
        summary = engine.summary(sweep, time.monotonic() - started)
    if stopped is not None:
        if as_json:  # a script reads what ran before the stop; the exit code and stderr say why it stopped
            summary["stopped"] = {"by": "budget guard", "reason": str(budget.fired.get("reason", "")) if budget else ""}
            out().print_json(json.dumps(summary, default=str))
        raise stopped
    best = summary["best"]
    if sweep.exhausted:
        err().print(sweep.exhausted, markup=False, highlight=False)  # said once, at the end
    if as_json:
        out().print_json(json.dumps(summary, default=str))
    else:
        out().print(f"{summary['completed']} completed, {summary['failed']} failed this run")
        if best:
            out().print(f"best trial {best['trial']}: {spec.space.metric} = {best['value']:.6g} with {best['params']}")
            out().print(f"best run: {best['url']}")
        if summary["cost_usd"] is not None:
            out().print(f"cost of this run's trials: ${summary['cost_usd']:.4f} (`lab cost` for every sweep)")
    if (progress.planned and summary["completed"] == 0 and not sweep.exhausted) or best is None:
        raise LabError(f"no trial of study {spec.study!r} completed", hint="see each run's lab.error tag in MLflow")
