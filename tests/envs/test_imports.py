"""The notebook's imports, read without running it (toolkit.envs.imports), and an environment layered on the lab's
kernel that imports them before a sweep's first trial (toolkit.envs.install): the lab's packages stay importable,
the environment's own win, and a module neither has is one line naming it and the file to add it to. A real venv
(uv, no packages installed into it) over the Python these tests run with, which is the local lab's kernel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.envs import imports, install, spec
from toolkit.errors import LabError


def test_only_a_cells_top_level_imports_count_and_magics_do_not_stop_the_reading():
    cell = (
        "%matplotlib inline\n"
        "!pip install lightgbm\n"
        "files = !ls\n"
        "import numpy as np, os.path\n"
        "from sklearn.model_selection import train_test_split\n"
        "from . import sibling\n"
        "from __future__ import annotations\n"
        "try:\n    import optional_thing\nexcept ImportError:\n    optional_thing = None\n"
        "if False:\n    import conditional_thing\n"
        "def f():\n    import inside_function\n"
        "for _ in range(1):\n    %time import timed_thing\n"
    )
    assert imports.of_cell(cell) == {"numpy", "os", "sklearn"}
    assert imports.of_cell("%%bash\nimport not_python\n") == set()
    assert imports.of_cell("def broken(:\n") == set()


def test_a_notebooks_imports_leave_out_the_modules_beside_it(tmp_path):
    (tmp_path / "helper.py").write_text("")
    (tmp_path / "mypkg").mkdir()
    cells = [
        {"cell_type": "markdown", "source": "import not_code"},
        {"cell_type": "code", "source": ["import pandas\n", "from helper import x\n"]},
        {"cell_type": "code", "source": "import mypkg.sub, lightgbm"},
    ]
    notebook = tmp_path / "nb.ipynb"
    notebook.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": cells}))
    assert imports.of_notebook(notebook) == ("lightgbm", "pandas")


@pytest.fixture
def environment(tmp_path) -> Path:
    """An environment's folder as `install.ensure` leaves it, with nothing installed: a venv of the lab's base
    Python (uv venv) finished as every environment is (`install._finish`: the toolkit and the lab's kernel on its
    path, its kernel)."""
    folder = tmp_path / "env"
    argv = [install.uv_binary(), "venv", "--quiet", "--python", install.base_python(), str(folder / "venv")]
    subprocess.run(argv, check=True, env=install.uv_env(None), capture_output=True)
    install._finish(folder, "0" * 64, installed=False)
    return folder


def imported(folder: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([install.venv_python(folder), "-c", code], capture_output=True, text=True, check=False)


def test_an_environment_sees_the_lab_kernels_packages_after_its_own(environment):
    import yaml  # the lab's kernel (this Python) has it; the environment's venv installed nothing

    ran = imported(environment, "import yaml, toolkit.checkpoints; print(yaml.__file__)")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == yaml.__file__
    site_packages = Path(install._site_packages(environment))
    (site_packages / "yaml").mkdir()
    (site_packages / "yaml" / "__init__.py").write_text("WHOSE = 'the environment'\n")
    ran = imported(environment, "import yaml; print(yaml.WHOSE)")
    assert ran.stdout.strip() == "the environment", ran.stderr  # the environment's own version wins


def test_a_module_neither_has_stops_in_one_line_naming_it_and_the_file(environment, tmp_path):
    requirements = tmp_path / "exp" / "requirements.txt"
    wanted = spec.Spec(spec.KIND_REQUIREMENTS, {"requirements.txt": "termcolor\n"}, str(requirements))
    install.check_imports(wanted, environment, ["yaml", "json"])  # the lab's kernel's and the standard library's
    with pytest.raises(LabError) as caught:
        install.check_imports(wanted, environment, ["yaml", "nosuchmodule_lab_test"])
    line = caught.value.one_line()
    assert "\n" not in line
    assert "the notebook imports 'nosuchmodule_lab_test', which neither requirements.txt nor the lab's kernel" in line
    assert f"add the package that provides 'nosuchmodule_lab_test' to {requirements}" in line


def test_a_module_whose_import_fails_in_the_environment_stops_too(environment, tmp_path):
    site_packages = Path(install._site_packages(environment))
    (site_packages / "clashing.py").write_text("raise ImportError('numpy.core.multiarray failed to import')\n")
    lock = tmp_path / "exp" / "uv.lock"
    locked = spec.Spec(spec.KIND_LOCK, {"pyproject.toml": "", "uv.lock": ""}, str(lock))
    with pytest.raises(LabError, match=r"`import clashing` fails in its environment \(ImportError: numpy.core") as e:
        install.check_imports(locked, environment, ["clashing"])
    assert f"{lock.with_name('pyproject.toml')} (then `uv lock`)" in e.value.one_line()


def test_the_probe_runs_with_any_python():
    ran = subprocess.run(
        [sys.executable, "-c", imports.PROBE, "json", "nosuchmodule_lab_test"], capture_output=True, text=True
    )
    assert json.loads(ran.stdout.splitlines()[-1]) == {"missing": ["nosuchmodule_lab_test"], "failed": {}}


def notebook_with(folder: Path, *sources: str) -> Path:
    cells = [{"cell_type": "code", "source": source, "metadata": {}, "outputs": [], "execution_count": None}
             for source in sources]  # fmt: skip
    path = folder / "train.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_without_requirements_a_module_the_labs_kernel_lacks_stops_the_sweep_before_its_first_trial(tmp_path):
    """Issue 25 item 2, for a sweep in the lab's own kernel: the step looks for the notebook's modules with the
    host's Python (here this machine, the local lab's kernel) and names what is missing, with where to add it."""
    from toolkit.envs import sweep
    from toolkit.sweeps import prepare

    notebook = notebook_with(tmp_path, "import json, no_such_module_xyz\nfrom yaml import safe_load")
    step = sweep.step(None, tmp_path, None, notebook)  # type: ignore[arg-type]
    assert isinstance(step, sweep.KernelModulesStep) and step.imports == ("json", "no_such_module_xyz", "yaml")
    with pytest.raises(LabError) as raised:
        step.on_host(prepare.LocalHost())
    said = raised.value.one_line()
    assert "the notebook imports 'no_such_module_xyz', which the lab's kernel does not provide" in said, said
    assert "requirements.txt beside the notebook" in said and "'json'" not in said and "'yaml'" not in said
    fine = sweep.step(None, tmp_path, None, notebook_with(tmp_path, "import json\nimport yaml"))  # type: ignore[arg-type]
    assert fine is not None and fine.on_host(prepare.LocalHost()) == prepare.Prepared()


def test_a_notebook_that_installs_its_own_packages_or_imports_nothing_gets_no_step(tmp_path):
    from toolkit.envs import sweep

    installs = notebook_with(tmp_path, "%pip install lightgbm", "import lightgbm")
    assert sweep.step(None, tmp_path, None, installs) is None  # type: ignore[arg-type]
    bang = notebook_with(tmp_path, "!pip install -q lightgbm\nimport lightgbm")
    assert sweep.step(None, tmp_path, None, bang) is None  # type: ignore[arg-type]
    nothing = notebook_with(tmp_path, "x = 1")
    assert sweep.step(None, tmp_path, None, nothing) is None  # type: ignore[arg-type]
