"""What `lab dispatch` refuses before anything is made: what is not a notebook (a script, a file that is not
nbformat 4 JSON) is one line naming what it is and how to make a notebook, before the lab is asked for anything
(no study, no MLflow run, no sweep handed over). Nothing here starts a lab: the refusal comes first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT

QUICKSTART = ROOT / "experiments" / "quickstart"


def dispatch(lab, notebook: Path, *extra: str):
    return lab("dispatch", str(notebook), "--space", str(QUICKSTART / "space.yml"), "-n", "2", "--local", *extra)


def nothing_made(home: Path) -> None:
    """No lab state under LAB_HOME: no tracker (MLflow, Optuna), no sweep folder."""
    made = sorted(str(p.relative_to(home)) for p in (home / ".lab").rglob("*"))
    assert not [p for p in made if "tracker" in p or "sweeps" in p or p.endswith(".db")], made


@pytest.mark.parametrize("detach", [[], ["--detach"]])
def test_a_python_script_is_refused_with_how_to_make_a_notebook(lab, isolated, tmp_path, detach):
    script = tmp_path / "simple_example.py"
    script.write_text("import lightgbm\nprint('training')\n")
    ran = dispatch(lab, script, *detach)
    assert ran.code == 1, ran.out + ran.err
    assert len(ran.err.strip().splitlines()) == 1, ran.err
    assert f"{script} is a Python script, not a notebook" in ran.err, ran.err
    assert "jupytext --to notebook simple_example.py" in ran.err, ran.err
    nothing_made(isolated)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("{ not json", "not valid JSON (line 1, column 3"),
        ("[1, 2]", "its JSON is a list, not an object"),
        (json.dumps({"cells": [], "metadata": {}}), "it has no nbformat version"),
        (json.dumps({"nbformat": 3, "worksheets": []}), "it is nbformat 3; papermill runs nbformat 4"),
        (json.dumps({"nbformat": 4, "cells": [{"cell_type": "oops", "source": ""}]}), "cell 0 is not a code"),
    ],
)
def test_an_ipynb_that_is_not_a_notebook_is_refused(lab, isolated, tmp_path, text, said):
    broken = tmp_path / "broken.ipynb"
    broken.write_text(text)
    ran = dispatch(lab, broken)
    assert ran.code == 1, ran.out + ran.err
    assert len(ran.err.strip().splitlines()) == 1, ran.err
    assert f"{broken} is not a notebook: {said}" in ran.err, ran.err
    assert "open it in Jupyter and save it again" in ran.err, ran.err
    nothing_made(isolated)
