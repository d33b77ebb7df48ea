"""The local lab under test: real MLflow servers on free ports, always stopped afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

DATA = Path(__file__).resolve().parents[2] / "data"


@pytest.fixture(autouse=True)
def stop_services(isolated: Path):
    """Whatever a test started under its LAB_HOME is stopped when it ends, pass or fail."""
    yield
    for record in (isolated / ".lab").glob("stacks/*/run/*.json"):
        try:
            pid = json.loads(record.read_text())["pid"]
            os.killpg(pid, signal.SIGKILL)
        except (ValueError, KeyError, ProcessLookupError, PermissionError):
            pass


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
    return {"mlflow": str(free_port()), "jupyter": str(free_port())}


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
def lab_up(lab, ports, isolated, state):
    """A local lab up (MLflow on a free port, no Jupyter) for the test: its URL; down after, and a detached sweep a
    failed test left running is killed."""
    ran = lab("up", "--local", "--no-jupyter", "--port", ports["mlflow"])
    assert ran.code == 0, ran.err
    yield f"http://127.0.0.1:{ports['mlflow']}"
    lab("down", "--local", "--force", timeout=300)
    from toolkit.sweeps import dispatch

    for lock in state.glob("sweeps/*/run.lock"):
        holder = dispatch.held(lock)
        if holder and holder["pid"] > 0:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(holder["pid"], signal.SIGKILL)


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
