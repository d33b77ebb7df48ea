"""What `lab dispatch` accepts as the experiment: a Jupyter notebook (nbformat 4 JSON), checked before anything is
made (a study, a run, a sweep handed over).

A Python script is refused, not converted: the sweep runs what the user handed in, and a script becomes a notebook
in one command the user sees and keeps (`jupytext --to notebook script.py`, then tag the cell of parameters).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolkit.errors import LabError

SUFFIX = ".ipynb"
NBFORMAT = 4  # papermill reads notebooks as nbformat 4
_SCRIPTS = {".py": "a Python script", ".r": "an R script", ".jl": "a Julia script", ".md": "a Markdown file"}


def check(path: Path) -> dict[str, Any]:
    """The notebook at `path` as JSON; LabError (one line: what it is, how to make a notebook) for anything else."""
    if not path.is_file():
        raise LabError(f"no notebook {path}", hint="pass the path of an .ipynb file")
    suffix = path.suffix.lower()
    if suffix != SUFFIX:
        what = _SCRIPTS.get(suffix, f"a {suffix} file" if suffix else "a file without a suffix")
        raise LabError(
            f"{path} is {what}, not a notebook: `lab dispatch` runs Jupyter notebooks (.ipynb) only",
            hint=f"make one with `jupytext --to notebook {path.name}` (pip install jupytext) and tag its cell of "
            "parameters `parameters`",
        )
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise LabError(f"{path} is not a notebook: not UTF-8 text ({error.reason})", hint=_RESAVE) from None
    except json.JSONDecodeError as error:
        raise LabError(
            f"{path} is not a notebook: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})",
            hint=_RESAVE,
        ) from None
    problem = _shape(document)
    if problem:
        raise LabError(f"{path} is not a notebook: {problem}", hint=_RESAVE)
    return document


_RESAVE = "open it in Jupyter and save it again, or dispatch the .ipynb Jupyter wrote"


def _shape(document: object) -> str:
    """What keeps a JSON document from being an nbformat 4 notebook ("" when nothing does)."""
    if not isinstance(document, dict):
        return f"its JSON is a {type(document).__name__}, not an object"
    version = document.get("nbformat")
    if not isinstance(version, int) or isinstance(version, bool):
        return "it has no nbformat version"
    if version != NBFORMAT:
        return f"it is nbformat {version}; papermill runs nbformat {NBFORMAT}"
    cells = document.get("cells")
    if not isinstance(cells, list):
        return "it has no list of cells"
    for number, cell in enumerate(cells):
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            return f"cell {number} is not a code, markdown or raw cell"
        if not isinstance(cell.get("source", ""), (str, list)):
            return f"cell {number}'s source is neither text nor a list of lines"
    return ""
