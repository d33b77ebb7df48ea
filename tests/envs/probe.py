"""What the environment tests share: a notebook whose folder names its requirements, and a space for it.

The notebook imports a tiny pure-Python package the lab's own venv does not have (termcolor, pinned), and tags its
run with that package's version and the Python it ran on, so a test can tell which environment ran the trial.
"""

from __future__ import annotations

import json
from pathlib import Path

PACKAGE = "termcolor==2.4.0"  # ~7 kB, pure Python, not in the lab's venv

CELLS = [
    ("x = 0.5\ntrial_number = 0\nseed = 0", ["parameters"]),
    (
        "import sys\nimport mlflow\nimport termcolor\nfrom importlib.metadata import version\n"
        "with mlflow.start_run():\n"
        "    mlflow.set_tag('env_python', sys.executable)\n"
        "    mlflow.set_tag('termcolor', version('termcolor'))\n"
        "    mlflow.log_metric('val_loss', (x - 0.3) ** 2)\n"
        "    run_id = mlflow.active_run().info.run_id\n"
        "    print(f\"env_python={sys.executable} termcolor={version('termcolor')} run={run_id}\")",
        [],
    ),
]


def notebook(folder: Path, requirements: str = PACKAGE + "\n", imports: str = "") -> Path:
    """A notebook in `folder` with `requirements` as its folder's requirements.txt; `imports` (lines of Python)
    begins its second cell."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = [(source if number == 0 else imports + source, tags) for number, (source, tags) in enumerate(CELLS)]
    cells = [
        {"cell_type": "code", "metadata": {"tags": tags}, "source": source, "outputs": [], "execution_count": None}
        for source, tags in sources
    ]
    doc = {
        "cells": cells,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path = folder / "uses_env.ipynb"
    path.write_text(json.dumps(doc))
    (folder / "requirements.txt").write_text(requirements)
    return path


def space(folder: Path) -> Path:
    path = folder / "env-space.yml"
    path.write_text(
        "objective: {metric: val_loss, direction: minimize}\n"
        "params:\n  x: {type: float, low: 0.0, high: 1.0}\n"
        "sampler: {name: random, seed: 7}\n"
    )
    return path


def printed(out: Path) -> list[dict[str, str]]:
    """What each executed notebook under `out` printed: env_python, termcolor and run, per notebook."""
    found = []
    for notebook in sorted(out.rglob("*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            for output in cell.get("outputs", []):
                text = "".join(output.get("text", ""))
                for line in text.splitlines():
                    if line.startswith("env_python="):
                        found.append(dict(pair.split("=", 1) for pair in line.split()))
    return found
