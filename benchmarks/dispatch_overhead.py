"""Dispatch overhead: 24 trials of a notebook that only sleeps 3 s, on 4 slots of the local lab.

Slot utilization = sum of the trials' time in papermill / (slots x the sweep's wall time); the
dispatcher's own overhead per trial = the slots' idle time / trials (asking Optuna, making the MLflow run,
reading the objective, storing the executed notebook, telling Optuna). Targets (issue 4): utilization
>= 0.85, overhead < 0.3 s per trial.

Run: .venv/bin/python benchmarks/dispatch_overhead.py [--trials 24] [--slots 4] [--sleep 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--sleep", type=float, default=3.0)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="lab-bench-"))
    env = {**os.environ, "LAB_HOME": str(home), "LAB_STACK": "bench"}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    try:
        notebook = home / "sleep.ipynb"
        sleep_notebook(notebook)
        space = home / "space.yml"
        space.write_text(
            "objective: {metric: val_loss, direction: minimize}\n"
            "params:\n  x: {type: float, low: 0.0, high: 1.0}\n"
            f"fixed: {{seconds: {args.sleep}}}\nsampler: {{name: random, seed: 1}}\n"
        )
        subprocess.run(
            [str(LAB), "up", "--local", "--no-jupyter", "--port", port], check=True, env=env, capture_output=True
        )
        done = subprocess.run(
            [
                str(LAB),
                "dispatch",
                str(notebook),
                "--space",
                str(space),
                "--trials",
                str(args.trials),
                "--parallel",
                str(args.slots),
                "--json",
                "--local",
                "--output",
                str(home / "out/{trial}.ipynb"),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        summary = json.loads(done.stdout)
    finally:
        subprocess.run([str(LAB), "down", "--local", "--force"], env=env, capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)
    busy = sum(t["seconds"] for t in summary["trials"])
    wall, slots, trials = summary["wall_s"], summary["slots"], len(summary["trials"])
    utilization = busy / (slots * wall)
    # The dispatcher's own time per trial: on each slot, the gap before each trial's papermill started
    # (after the sweep began, or after the slot's previous trial ended).
    gaps = []
    for slot in {t["slot"] for t in summary["trials"]}:
        mine = sorted((t for t in summary["trials"] if t["slot"] == slot), key=lambda t: t["slot_start"])
        previous_end = 0.0
        for trial in mine:
            gaps.append(trial["slot_start"] - previous_end)
            previous_end = trial["slot_end"]
    overhead = sum(gaps) / len(gaps)
    tail = slots * wall - busy - sum(gaps)
    per_trial = busy / trials
    print(
        f"{trials} trials of a {args.sleep:g} s notebook on {slots} slots: wall {wall:.1f} s, "
        f"{summary['completed']} completed"
    )
    print(
        f"time in papermill per trial: {per_trial:.2f} s ({per_trial - args.sleep:.2f} s beyond the sleep: "
        "kernel start, imports, papermill)"
    )
    print(f"slot utilization: {utilization:.3f} (target >= 0.85: {'met' if utilization >= 0.85 else 'NOT met'})")
    print(f"idle at the end (slots done, waiting for the last trials): {tail:.1f} slot-seconds")
    print(f"dispatcher overhead per trial: {overhead:.3f} s (target < 0.3 s: {'met' if overhead < 0.3 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
