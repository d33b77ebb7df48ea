"""The local lab under test: real MLflow servers on free ports, always stopped afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LAB, ROOT, UNSET_FOR_TESTS, free_port, home_env, own_tmp

DATA = Path(__file__).resolve().parents[2] / "data"


def shares_the_module_lab(request: pytest.FixtureRequest) -> bool:
    """A test of a module marked `shared_lab` that asks for `lab_up` runs in the module's one lab (its HOME and
    LAB_HOME), unless it is marked `own_lab` (it tests up, down or restore itself)."""
    node = request.node
    return (
        node.get_closest_marker("shared_lab") is not None
        and node.get_closest_marker("own_lab") is None
        and "lab_up" in request.fixturenames
    )


@dataclass(frozen=True)
class ModuleLab:
    home: Path
    url: str
    up_argv: tuple[str, ...]
    env: dict[str, str]


def kill_recorded(lab_home: Path) -> None:
    """SIGKILL every service recorded under `lab_home` (its process group), and the dispatchers holding a sweep's
    lock: the last resort after a test, pass or fail."""
    for record in lab_home.glob("stacks/*/run/*.json"):
        try:
            pid = json.loads(record.read_text())["pid"]
            os.killpg(pid, signal.SIGKILL)
        except (ValueError, KeyError, ProcessLookupError, PermissionError):
            pass
    stop_sweeps(lab_home / "stacks" / "dev")


def stop_sweeps(state: Path) -> None:
    """Kill the dispatchers (detached sweeps) still holding a sweep's lock in the stack folder `state`."""
    from toolkit.sweeps import dispatch

    for lock in state.glob("sweeps/*/run.lock"):
        holder = dispatch.held(lock)
        if holder and holder["pid"] > 0:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(holder["pid"], signal.SIGKILL)


@pytest.fixture(scope="module")
def module_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleLab]:
    """One local lab (MLflow, optuna-dashboard; no Jupyter) for the tests of a `shared_lab` module that only need *a*
    lab: its own HOME, LAB_HOME and TMPDIR; down at the end of the module and nothing of it left running."""
    home = tmp_path_factory.mktemp("module-home")
    (home / ".lab").mkdir()
    with own_tmp() as tmp:
        env = {k: v for k, v in os.environ.items() if k not in UNSET_FOR_TESTS}
        env.update(home_env(home, tmp), COLUMNS="200")
        mlflow_port = str(free_port())
        argv = ("up", "--local", "--no-jupyter", "--port", mlflow_port, "--dashboard-port", str(free_port()))
        shared = ModuleLab(home, f"http://127.0.0.1:{mlflow_port}", argv, env)
        try:
            ran = run_lab(shared, *argv)
            assert ran.returncode == 0, ran.stderr
            yield shared
        finally:
            run_lab(shared, "down", "--local", "--force")
            kill_recorded(home / ".lab")


def run_lab(shared: ModuleLab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LAB), *args], env=shared.env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(autouse=True)
def isolated(isolated: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The root `isolated`; a test that shares its module's lab has that lab's HOME and LAB_HOME (its own TMPDIR)."""
    if not shares_the_module_lab(request):
        return isolated
    shared: ModuleLab = request.getfixturevalue("module_lab")
    for name in ("HOME", "LAB_HOME", "CLOUDSDK_CONFIG"):
        monkeypatch.setenv(name, shared.env[name])
    return shared.home


@pytest.fixture(autouse=True)
def stop_services(isolated: Path, request: pytest.FixtureRequest):
    """Whatever a test started under its LAB_HOME is stopped when it ends, pass or fail (the module's lab only when
    the module ends, but a sweep a test left running in it now)."""
    yield
    if shares_the_module_lab(request):
        stop_sweeps(isolated / ".lab" / "stacks" / "dev")
    else:
        kill_recorded(isolated / ".lab")


@pytest.fixture(scope="session")
def current_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tracker DB of today's MLflow schema with 3 runs: the 2.x fixture, upgraded once."""
    folder = tmp_path_factory.mktemp("golden")
    db = folder / "mlflow.db"
    shutil.copy(DATA / "mlflow-2.x.db", db)
    subprocess.run(
        [sys.executable, "-m", "mlflow", "db", "upgrade", f"sqlite:///{db}"], check=True, capture_output=True
    )
    return db


@pytest.fixture
def ports() -> dict[str, str]:
    return {"mlflow": str(free_port()), "jupyter": str(free_port()), "dashboard": str(free_port())}


def up_args(ports: dict[str, str], *, jupyter: bool = False) -> list[str]:
    """`lab up --local` on the test's own free ports: MLflow's, optuna-dashboard's (its default 8080 is for one lab
    per machine, and tests run side by side) and, when asked, Jupyter's (else none)."""
    argv = ["up", "--local", "--port", ports["mlflow"], "--dashboard-port", ports["dashboard"]]
    return [*argv, "--jupyter-port", ports["jupyter"]] if jupyter else [*argv, "--no-jupyter"]


@pytest.fixture
def no_client_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """An MLflow client in the test fails at once when the server is killed, instead of retrying for minutes and
    perhaps landing a late write on the restored tracker."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


@pytest.fixture
def state(isolated: Path) -> Path:
    """The dev stack's local state folder."""
    return isolated / ".lab" / "stacks" / "dev"


@pytest.fixture
def tracker(state: Path, current_mlflow_db: Path) -> Path:
    """A stopped lab whose tracker holds a current-schema DB with 3 runs."""
    folder = state / "tracker"
    folder.mkdir(parents=True)
    shutil.copy(current_mlflow_db, folder / "mlflow.db")
    return folder


@pytest.fixture
def lab_up(lab, ports, isolated, state, request):
    """A local lab up (MLflow on a free port, no Jupyter) for the test: its URL; down after, and a detached sweep a
    failed test left running is killed. In a `shared_lab` module, the module's lab (started again if a test before
    stopped it)."""
    if shares_the_module_lab(request):
        shared: ModuleLab = request.getfixturevalue("module_lab")
        if not answers(shared.url):
            ran = run_lab(shared, *shared.up_argv)
            assert ran.returncode == 0, ran.stderr
        yield shared.url
        return
    ran = lab(*up_args(ports))
    assert ran.code == 0, ran.err
    yield f"http://127.0.0.1:{ports['mlflow']}"
    lab("down", "--local", "--force", timeout=300)
    stop_sweeps(state)


def probe_space(tmp_path: Path, **fixed) -> Path:
    """A space file for tests/data/notebooks/probe.ipynb: x in [0, 1], the `fixed` parameters, a seeded sampler."""
    path = tmp_path / "probe.yml"
    fixed_text = ", ".join(f"{k}: {json.dumps(v)}" for k, v in fixed.items())
    path.write_text(
        "objective: {metric: val_loss, direction: minimize}\n"
        "params:\n  x: {type: float, low: 0.0, high: 1.0}\n"
        f"fixed: {{{fixed_text}}}\n"
        "sampler: {name: random, seed: 7}\n"
    )
    return path


def study_of(state: Path, name: str) -> Any:
    """The local lab's study `name`, read from its optuna.db."""
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{state / 'tracker' / 'optuna.db'}")
