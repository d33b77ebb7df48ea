"""The budget guard on the local lab: this machine priced at $1 a second (`hosts: {local: 3600}`) and a $55 budget.
The guard (a process of the lab, checking every 5 s here, 30 s by default) warns from 80% in the sweep's log and
`lab sweep watch`, and once the budget is reached stops the lab: the running sweep as `lab sweep stop` does, a
verified snapshot, the lab's services; a sweep run in a terminal (`lab dispatch --no-detach`) shows the warning and
is stopped as Ctrl-C stops it, saying why. Nothing is lost: the finished run is in MLflow, the interrupted trial is
queued and tagged, a plain `lab up` is refused, and after `lab up --budget` the same dispatch resumes it.
Real MLflow server, Optuna storage, papermill kernels."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import LAB, ROOT
from tests.labs.local.conftest import probe_space, study_of
from toolkit.budget import guard

mlflow = pytest.importorskip("mlflow")

PROBE = ROOT / "tests" / "data" / "notebooks" / "probe.ipynb"
BUDGET_USD = 55
USD_PER_S = 1.0


@pytest.fixture
def priced(isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The dev stack with a $55 budget, this machine at $1 a second, the guard looking every 5 s."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.yaml").write_text("name: lab\nruntime: python\n")
    (project / "Pulumi.dev.yaml").write_text(f"config:\n  lab:target: local\n  lab:budgetUsd: {BUDGET_USD}\n")
    (isolated / ".lab" / "prices.yaml").write_text(f"hosts:\n  local: {USD_PER_S * 3600}\n")
    monkeypatch.setenv("LAB_PROJECT_DIR", str(project))
    monkeypatch.setenv("LAB_BUDGET_GUARD_EVERY_S", "5")
    return project


def sweep_state(state: Path, name: str) -> dict:
    try:
        return json.loads((state / "sweeps" / name / "state.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def fired(state: Path) -> dict | None:
    try:
        return json.loads((state / "budget.json").read_text())["ledger"]["fired"]
    except (OSError, json.JSONDecodeError, KeyError):
        return None


def test_the_guard_stops_the_lab_at_the_budget_and_nothing_is_lost(lab, priced, lab_up, state, tmp_path):
    assert guard.EVERY_S <= 30, "the guard must look at least every 30 s to fire within a minute"
    up_at = json.loads((state / "uptime.json").read_text())["periods"][-1]["up"]
    reached_at = up_at + BUDGET_USD / USD_PER_S
    hold = tmp_path / "hold"
    hold.write_text("")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    done_argv = ["dispatch", str(PROBE), "--space", str(probe_space(tmp_path / "a")), "-n", "1", "--study", "done"]
    held_argv = [
        "dispatch", str(PROBE), "--space", str(probe_space(tmp_path / "b", hold=str(hold))), "-n", "1",
        "--study", "held",
    ]  # fmt: skip
    for argv in (done_argv, held_argv):
        assert (ran := lab(*argv, "--detach", "--local")).code == 0, ran.err
    (tmp_path / "c").mkdir()
    terminal_argv = [
        "dispatch", str(PROBE), "--space", str(probe_space(tmp_path / "c", hold=str(hold))), "-n", "1",
        "--study", "terminal", "--local", "--no-detach", "--output", str(tmp_path / "out/{trial}-{run_id}.ipynb"),
    ]  # fmt: skip
    terminal_err = (tmp_path / "terminal.err").open("w")
    terminal = subprocess.Popen(  # a sweep in a terminal: `lab dispatch` in the foreground
        [str(LAB), *terminal_argv], stdout=subprocess.DEVNULL, stderr=terminal_err, env={**os.environ, "COLUMNS": "200"}
    )
    terminal_err.close()  # the child has its own copy

    def terminal_running() -> bool:
        try:
            return [t.state.name for t in study_of(state, "terminal").trials] == ["RUNNING"]
        except KeyError:  # no such study yet
            return False

    while not (
        sweep_state(state, "done").get("status") == "finished"
        and sweep_state(state, "held").get("slots")
        and terminal_running()
    ):
        assert fired(state) is None, "the budget ran out before the sweeps were under way: raise BUDGET_USD"
        assert terminal.poll() is None, (tmp_path / "terminal.err").read_text()
        time.sleep(0.5)
    client = mlflow.MlflowClient(lab_up)
    held_runs = client.search_runs([client.get_experiment_by_name("held").experiment_id])
    assert [r.info.status for r in held_runs] == ["RUNNING"]

    deadline = reached_at + 90
    while fired(state) is None:
        assert time.time() < deadline, f"the guard did not fire: {(state / 'logs' / 'budget-guard.log').read_text()}"
        time.sleep(1)
    record = fired(state)
    assert record["budget"] and f"the budget of ${BUDGET_USD:.2f} is spent" in record["reason"]
    assert reached_at <= record["at"] <= reached_at + 60, f"fired {record['at'] - reached_at:.1f} s after the budget"

    log = (state / "sweeps" / "held" / "dispatch.log").read_text()
    assert "budget warning: $" in log and "budget warning: budget" not in log, log
    assert f"the budget guard stopped the lab: the budget of ${BUDGET_USD:.2f} is spent" in log, log
    assert sweep_state(state, "held")["status"] == "stopped"
    study = study_of(state, "held")
    assert [t.state.name for t in study.trials].count("WAITING") == 1, "the interrupted trial is queued"
    assert terminal.wait(30) == 130, "the terminal's sweep is stopped as Ctrl-C stops it"
    said = (tmp_path / "terminal.err").read_text()
    assert "budget warning: $" in said and "warning: budget" not in said, said  # the 80% warning, and in the live view
    assert f"(REACHED: the budget of ${BUDGET_USD:.2f} is spent" in said, said
    assert "stopped 1 running trial, marked them interrupted and queued their parameters" in said, said
    assert [t.state.name for t in study_of(state, "terminal").trials].count("WAITING") == 1
    status = json.loads(lab("status", "--local", "--json").out)
    assert {c["state"] for c in status["components"].values()} == {"stopped"}, status["components"]
    assert status["budget"]["state"] == "stop" and status["budget"]["guard"]["reason"] == record["reason"]
    assert any(Path(b).is_dir() for b in (state / "backups").iterdir()), "a snapshot was taken"

    refused = lab("up", "--local", "--no-jupyter", "--port", lab_up.rsplit(":", 1)[1])
    assert refused.code == 1 and "the budget is spent" in refused.err and "--budget USD" in refused.err, refused.err
    assert len(refused.err.strip().splitlines()) == 1, refused.err
    again = lab("up", "--local", "--no-jupyter", "--port", lab_up.rsplit(":", 1)[1], "--budget", "5000")
    assert again.code == 0, again.err
    assert "of $5000.00 spent since" in again.out, again.out

    client = mlflow.MlflowClient(lab_up)
    done_runs = client.search_runs([client.get_experiment_by_name("done").experiment_id])
    assert [(r.info.status, "val_loss" in r.data.metrics) for r in done_runs] == [("FINISHED", True)]
    interrupted = client.get_run(held_runs[0].info.run_id)
    assert f"budget of ${BUDGET_USD:.2f} is spent" in interrupted.data.tags[guard.TAG]

    hold.unlink()
    assert (ran := lab(*held_argv, "--detach", "--local")).code == 0, ran.err
    watched = lab("sweep", "watch", "held", "--local", "--json", timeout=300)
    assert watched.code == 0, watched.err
    study = study_of(state, "held")
    assert [t.state.name for t in study.trials].count("COMPLETE") == 1
    runs = client.search_runs([client.get_experiment_by_name("held").experiment_id])
    assert held_runs[0].info.run_id in {r.data.tags.get("lab.resumes") for r in runs}, "the interrupted trial resumed"
