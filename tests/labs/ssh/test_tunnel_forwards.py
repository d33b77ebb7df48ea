"""`lab tunnel` on the ssh target forwards the tracker's optuna-dashboard (on the tracker's 127.0.0.1, at the port the
role writes to /etc/lab/tracker.json) beside MLflow and each worker's Jupyter. Unit level: the tracker's description
is the one the role writes; tests/labs/ssh/test_ssh_target.py opens the tunnel to a configured tracker."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from toolkit.config import schema
from toolkit.labs import ssh as remote_lab
from toolkit.tracker import dashboard

ROLE = Path(__file__).resolve().parents[3] / "playbooks" / "roles" / "lab_tracker"


@pytest.fixture
def ssh_lab(isolated, tmp_path, monkeypatch):
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    stack = tmp_path / "Pulumi.tunnel.yaml"
    stack.write_text(
        "config:\n"
        "  lab:target: ssh\n"
        "  lab:trackerHost: 192.0.2.10\n"
        "  lab:workerHosts: [192.0.2.11, 192.0.2.12]\n"
        "  lab:sshUser: ci\n"
        f"  lab:sshPublicKeyPath: {key}.pub\n"
    )
    return remote_lab.open_lab(str(stack), "ssh")


def tracker_json(dashboard_port: int | None) -> dict[str, object]:
    """/etc/lab/tracker.json as the role writes it (older trackers have no dashboard_port)."""
    facts: dict[str, object] = {
        "mlflow_url": f"http://192.0.2.10:{schema.MLFLOW_PORT}",
        "mlflow_bind": "192.0.2.10",
        "optuna_port": remote_lab.OPTUNA_PORT,
        "replica": "file:///srv/lab/replica",
    }
    if dashboard_port is not None:
        facts["dashboard_port"] = dashboard_port
    return facts


@pytest.mark.parametrize("remote_port", [dashboard.DEFAULT_PORT, 18080, None])
def test_the_tunnel_forwards_the_trackers_dashboard_on_its_loopback(ssh_lab, monkeypatch, remote_port):
    monkeypatch.setattr(remote_lab, "tracker_facts", lambda lab: tracker_json(remote_port))
    plan = ssh_lab.forwards(15000, 18888, 18081)
    by_what = {f.what: f for f in plan}
    assert list(by_what) == ["MLflow", "Optuna dashboard", "Jupyter on worker-1", "Jupyter on worker-2"]
    shown = by_what["Optuna dashboard"]
    assert shown.host is ssh_lab.tracker
    assert (shown.local_port, shown.address) == (18081, "127.0.0.1")
    assert shown.remote_port == (remote_port or dashboard.DEFAULT_PORT)
    assert shown.note == "", "the dashboard needs no token file (it is reached only through SSH)"


def test_the_role_and_the_toolkit_agree_on_the_dashboard_and_its_unit():
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert defaults["lab_tracker_dashboard_port"] == dashboard.DEFAULT_PORT
    assert any(p.startswith("optuna-dashboard==") for p in defaults["lab_tracker_packages"])
    tasks = (ROLE / "tasks" / "main.yml").read_text()
    assert "'dashboard_port': lab_tracker_dashboard_port | int" in tasks, "tracker.json must carry the port"
    unit = (ROLE / "templates" / "lab-optuna-dashboard.service.j2").read_text()
    assert "--host 127.0.0.1 --port {{ lab_tracker_dashboard_port }}" in unit
    assert "--storage grpc://127.0.0.1:{{ lab_tracker_optuna_port }}" in unit
    assert "User={{ lab_tracker_user }}" in unit
    # It stops with what takes writes (down, restore) and with the lab's other units (stop.yml).
    assert remote_lab.DASHBOARD_UNIT == "lab-optuna-dashboard.service"
    assert remote_lab.DASHBOARD_UNIT in remote_lab.SERVING and remote_lab.DASHBOARD_UNIT in remote_lab.TRACKER_UNITS
    stop = yaml.safe_load((ROLE.parents[1] / "stop.yml").read_text())
    assert remote_lab.DASHBOARD_UNIT in stop[0]["vars"]["lab_stop_tracker_units"]
