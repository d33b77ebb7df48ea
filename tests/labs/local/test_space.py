"""Search-space files: bounds and steps that are NaN or infinite (YAML `.nan`, `.inf`, `-.inf`) are refused in one
line naming the parameter and the key, before any lab is needed; finite ones still make Optuna distributions."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.errors import LabError
from toolkit.sweeps import space

HEAD = "objective: {metric: val_loss, direction: minimize}\nparams:\n"


def space_file(tmp_path: Path, params: str) -> Path:
    path = tmp_path / "space.yml"
    path.write_text(HEAD + params)
    return path


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        ("lr: {type: float, low: .nan, high: 1.0}", "params.lr.low: must be a finite number, got .nan"),
        ("lr: {type: float, low: 0.0, high: .inf}", "params.lr.high: must be a finite number, got .inf"),
        ("lr: {type: float, low: -.inf, high: 1.0}", "params.lr.low: must be a finite number, got -.inf"),
        ("lr: {type: float, low: 0.0, high: .NaN}", "params.lr.high: must be a finite number, got .nan"),
        ("lr: {type: float, low: 1.0e-4, high: .Inf, log: true}", "params.lr.high: must be a finite number, got .inf"),
        ("n: {type: int, low: 1, high: .inf}", "params.n.high: must be a finite number, got .inf"),
        ("n: {type: int, low: -.inf, high: 8}", "params.n.low: must be a finite number, got -.inf"),
        ("w: {type: float, low: 0, high: 1, step: .nan}", "params.w.step: must be a finite positive number, got .nan"),
        ("w: {type: float, low: 0, high: 1, step: .inf}", "params.w.step: must be a finite positive number, got .inf"),
        ("n: {type: int, low: 0, high: 8, step: .inf}", "params.n.step: must be a finite positive number, got .inf"),
    ],
)
def test_nan_and_infinite_bounds_and_steps_are_refused(tmp_path, param, expected):
    path = space_file(tmp_path, f"  {param}\n")
    with pytest.raises(LabError) as refused:
        space.load(path)
    line = refused.value.one_line()
    assert line == f"{path} has 1 problem: {expected}"
    assert "\n" not in line


def test_every_non_finite_field_is_named_at_once(tmp_path):
    path = space_file(
        tmp_path,
        "  a: {type: float, low: .nan, high: .inf}\n  b: {type: float, low: 0.0, high: 1.0, step: -.inf}\n",
    )
    with pytest.raises(LabError) as refused:
        space.load(path)
    line = refused.value.one_line()
    assert line.startswith(f"{path} has 3 problems: ")
    assert "params.a.low: must be a finite number, got .nan" in line
    assert "params.a.high: must be a finite number, got .inf" in line
    assert "params.b.step: must be a finite positive number, got -.inf" in line


def test_low_above_or_equal_to_high_is_refused(tmp_path):
    for low, high in (("1.0", "0.5"), ("0.5", "0.5")):
        path = space_file(tmp_path, f"  lr: {{type: float, low: {low}, high: {high}}}\n")
        with pytest.raises(LabError) as refused:
            space.load(path)
        assert f"params.lr: high ({high}) must be greater than low ({low})" in refused.value.one_line()


def test_finite_bounds_still_make_optuna_distributions(tmp_path):
    optuna = pytest.importorskip("optuna")
    path = space_file(
        tmp_path,
        "  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}\n"
        "  width: {type: int, low: 16, high: 256, step: 16}\n"
        "  big: {type: int, low: -100000000000000000000, high: 100000000000000000000}\n"
        "  drop: {type: float, low: -1.0e+300, high: 1.0e+300, step: 1.0e+299}\n",
    )
    made = space.load(path).distributions()
    assert made["lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    assert made["width"] == optuna.distributions.IntDistribution(16, 256, step=16)
    assert made["big"].high == 10**20


def test_dispatch_refuses_the_file_in_one_line_before_anything_starts(lab, tmp_path):
    path = space_file(tmp_path, "  lr: {type: float, low: 0.0, high: .inf}\n")
    notebook = Path(__file__).resolve().parents[2] / "data" / "notebooks" / "probe.ipynb"
    ran = lab("dispatch", str(notebook), "--space", str(path), "--local")
    assert ran.code == 1
    assert ran.err.strip() == f"error: {path} has 1 problem: params.lr.high: must be a finite number, got .inf"
