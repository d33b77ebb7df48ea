"""The full cycle through the CLI: up -> log -> backup -> down -> up (restore) -> read."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from tests.labs.local.conftest import up_args

mlflow = pytest.importorskip("mlflow")

pytestmark = pytest.mark.slow  # starts labs or services: not in `pytest -m 'not slow'`


def client(port: str):
    return mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")


def test_up_log_backup_down_up_read(lab, ports, state, tmp_path):
    ran = lab(*up_args(ports, jupyter=True))
    assert ran.code == 0, ran.err
    assert f"MLflow   http://127.0.0.1:{ports['mlflow']}" in ran.out
    assert f"Jupyter  http://127.0.0.1:{ports['jupyter']}/lab" in ran.out

    # Up again: nothing changes.
    again = lab(*up_args(ports, jupyter=True))
    assert again.code == 0 and "already up; nothing changed" in again.out
    status = json.loads(lab("status", "--local", "--json").out)
    assert {n: c["state"] for n, c in status["components"].items()} == {
        "mlflow": "running",
        "optuna-dashboard": "running",
        "jupyter": "running",
        "replica": "running",
    }
    pids = {n: c["pid"] for n, c in status["components"].items()}

    # Log a run with metrics and an artifact.
    tracking = client(ports["mlflow"])
    experiment = tracking.create_experiment("cycle")
    run = tracking.create_run(experiment)
    for step in range(5):
        tracking.log_metric(run.info.run_id, "val_loss", 1.0 / (step + 1), step=step)
    artifact = tmp_path / "weights.txt"
    artifact.write_text("w = 42\n")
    tracking.log_artifact(run.info.run_id, str(artifact))
    tracking.set_terminated(run.info.run_id)

    ran = lab("backup", "--local", "--json")
    assert ran.code == 0, ran.err
    manifest = json.loads(ran.out)
    assert manifest["files"][0]["counts"]["runs"] == 1
    assert manifest["files"][0]["integrity"] == "ok"

    ran = lab("down", "--local")
    assert ran.code == 0, ran.err
    assert "the lab is down (jupyter, mlflow, optuna-dashboard, replica stopped)" in ran.out
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists(), "a service outlived `lab down`"
    assert lab("down", "--local").out.strip() == "nothing to do: the lab is not running"

    # Lose the tracker's DB: the next up restores the newest verified backup (the one `down` took).
    (state / "tracker" / "mlflow.db").unlink()
    ran = lab(*up_args(ports))
    assert ran.code == 0, ran.err
    assert "restored backup" in ran.err
    tracking = client(ports["mlflow"])
    (found,) = tracking.search_runs([experiment])
    assert found.info.run_id == run.info.run_id
    history = tracking.get_metric_history(run.info.run_id, "val_loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [1.0, 0.5, 1 / 3, 0.25, 0.2]
    downloaded = tracking.download_artifacts(run.info.run_id, "weights.txt", str(tmp_path / "back"))
    assert Path(downloaded).read_text() == "w = 42\n"
    assert lab("down", "--local").code == 0


def test_jupyter_token_stays_secret(lab, ports, state):
    ran = lab(*up_args(ports, jupyter=True))
    assert ran.code == 0, ran.err
    token_file = state / "secrets" / "jupyter_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    token = token_file.read_text().strip()
    assert len(token) >= 32
    assert token not in ran.out + ran.err
    for log in (state / "logs").iterdir():
        assert token not in log.read_text(), f"the token is in {log}"
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert token not in processes
    import urllib.error
    import urllib.request

    url = f"http://127.0.0.1:{ports['jupyter']}/api/contents"
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(url, timeout=5)
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200
    # Both services listen on 127.0.0.1 only.
    import psutil

    listening = {c.laddr.port: c.laddr.ip for c in psutil.net_connections("tcp") if c.status == "LISTEN"}
    assert listening[int(ports["mlflow"])] == "127.0.0.1"
    assert listening[int(ports["jupyter"])] == "127.0.0.1"
