"""Dispatch overhead: 24 trials of a notebook that only sleeps 3 s, on 4 slots of the local lab.

Two ways to run a trial, the same sweep each time:
- papermill: a papermill process per trial (kernel start and imports inside the trial: the old way);
- warm: the slot's runner (`toolkit.sweeps.runner`) started the trial's kernel, forked with the
  contract's imports done, while the slot's previous trial ran.

Figures for each: (a) from a slot becoming free (its previous trial's `run` returned) to the next
trial's first cell (p50, max; issue 15's target <= 1.5 s), and from the previous trial's last cell
ending to the next one's first cell (the whole turnaround: the end of a trial, the dispatcher's
bookkeeping, the start of the next); (b) utilization = time in the notebook's own cells / (slots x the
sweep's wall time); also the slot's time per trial and the dispatcher's share (issue 4's figures: slot
utilization = time in the slot / slot time, overhead between trials).

Run: .venv/bin/python benchmarks/dispatch_overhead.py [--trials 24] [--slots 4] [--sleep 3] [--only warm]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

LAB = Path(sys.executable).with_name("lab")


def sleep_notebook(path: Path) -> None:
    params = new_code_cell("seconds = 3.0\nx = 0.0\ntrial_number = 0\nseed = 0")
    params.metadata["tags"] = ["parameters"]
    body = new_code_cell(
        "import time\nimport mlflow\ntime.sleep(seconds)\n"
        "with mlflow.start_run():\n    mlflow.log_metric('val_loss', x)"
    )
    notebook = new_notebook(cells=[params, body])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)


def wall(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def cells_of(output: str) -> list[dict[str, Any]]:
    """Each executed cell's papermill timings (wall clock)."""
    notebook = nbformat.read(output, as_version=4)
    return [dict(cell.metadata["papermill"]) for cell in notebook.cells]


def sweep(mode: str, args: argparse.Namespace, home: Path, tracking_uri: str) -> dict[str, Any]:
    """One sweep with one kind of slot; its figures."""
    from toolkit.sweeps import dispatch, slots, space

    notebook = home / "sleep.ipynb"
    spec = dispatch.SweepSpec(
        notebook=notebook,
        space=space.load(home / "space.yml"),
        study=f"bench-{mode}",
        trials=args.trials,
        timeout=None,
        output_pattern=str(home / f"out-{mode}" / "{trial}.ipynb"),
        tracking_uri=tracking_uri,
        storage_path=next(home.glob("stacks/*/tracker")) / "optuna.db",
    )
    slot_list = [slots.LocalSlot(name=f"slot-{i}", warm=mode == "warm") for i in range(args.slots)]
    engine = dispatch.Sweep(spec, slot_list)
    engine.open()
    clock = time.time() - time.monotonic()  # the sweep's clock (monotonic) -> wall clock
    began = time.monotonic()
    progress = engine.run()
    elapsed = time.monotonic() - began
    with_cells = [(r, cells_of(r.output)) for r in progress.results]
    in_cells = sum(sum(c["duration"] or 0.0 for c in cells) for _, cells in with_cells)
    free_to_first, turnaround, between = [], [], []
    steady_cells, steady_span = 0.0, 0.0  # each slot after its first trial (whose kernel started cold)
    for slot in {r.slot for r in progress.results}:
        mine = sorted((rc for rc in with_cells if rc[0].slot == slot), key=lambda rc: rc[0].slot_start)
        previous_end = began
        for (before, before_cells), (_, after_cells) in itertools.pairwise(mine):
            first = wall(after_cells[0]["start_time"])
            free_to_first.append(first - (before.slot_end + clock))
            turnaround.append(first - wall(before_cells[-1]["end_time"]))
            steady_cells += sum(c["duration"] or 0.0 for c in after_cells)
        if len(mine) > 1:
            steady_span += mine[-1][0].slot_end - mine[0][0].slot_end
        for result, _ in mine:
            between.append(result.slot_start - previous_end)
            previous_end = result.slot_end
    in_slot = sum(r.seconds for r in progress.results)
    return {
        "mode": mode,
        "completed": progress.count("COMPLETE"),
        "trials": len(progress.results),
        "wall": elapsed,
        "free_to_first": free_to_first,
        "turnaround": turnaround,
        "utilization": in_cells / (args.slots * elapsed),
        "steady": steady_cells / steady_span if steady_span else 0.0,
        "slot_utilization": in_slot / (args.slots * elapsed),
        "per_trial": in_slot / len(progress.results),
        "dispatcher": statistics.mean(between),
    }


def report(figures: dict[str, Any], args: argparse.Namespace) -> None:
    free, turn = sorted(figures["free_to_first"]), sorted(figures["turnaround"])
    target = "met" if free and max(free) <= 1.5 else "NOT met"
    print(
        f"[{figures['mode']}] {figures['trials']} trials of a {args.sleep:g} s notebook on {args.slots} slots: "
        f"wall {figures['wall']:.1f} s, {figures['completed']} completed"
    )
    print(
        f"  free slot -> next first cell: p50 {statistics.median(free):.2f} s, max {max(free):.2f} s "
        f"(target <= 1.5 s: {target})"
    )
    print(
        f"  last cell -> next first cell (whole turnaround): p50 {statistics.median(turn):.2f} s, max {max(turn):.2f} s"
    )
    print(
        f"  utilization (time in the notebook's cells / slot time): {figures['utilization']:.3f}, "
        f"after each slot's first trial {figures['steady']:.3f}; "
        f"time in the slot per trial {figures['per_trial']:.2f} s; slot utilization {figures['slot_utilization']:.3f}; "
        f"dispatcher between trials {figures['dispatcher']:.3f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--sleep", type=float, default=3.0)
    parser.add_argument("--only", choices=["papermill", "warm"], help="run one of the two ways only")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="lab-bench-"))
    os.environ.update({"LAB_HOME": str(home), "LAB_STACK": "bench", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    results = []
    try:
        sleep_notebook(home / "sleep.ipynb")
        (home / "space.yml").write_text(
            "objective: {metric: val_loss, direction: minimize}\n"
            "params:\n  x: {type: float, low: 0.0, high: 1.0}\n"
            f"fixed: {{seconds: {args.sleep}}}\nsampler: {{name: random, seed: 1}}\n"
        )
        subprocess.run([str(LAB), "up", "--local", "--no-jupyter", "--port", port], check=True, capture_output=True)
        for mode in [args.only] if args.only else ["papermill", "warm"]:
            results.append(sweep(mode, args, home, f"http://127.0.0.1:{port}"))
            report(results[-1], args)
    finally:
        subprocess.run([str(LAB), "down", "--local", "--force"], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
