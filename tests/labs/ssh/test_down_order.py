"""`lab down`'s order on a tracker reached over SSH (ssh target, and gcp before it destroys anything): MLflow and
the Optuna proxy stop taking writes, the replica catches up, the backup is taken; a failed backup starts them
again. The SSH commands and the agent are recorded here; tests/labs/ssh/test_replica.py runs the same on a
VM-like tracker."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from toolkit.errors import LabError
from toolkit.hosts import ssh as remote
from toolkit.labs import ssh as remote_lab

TRACKER = remote.Host("tracker", "192.0.2.10", remote.TRACKER)


class Tracker:
    """The tracker as down sees it: its units' states, and what was asked of it, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, replica: str = "active", catch_up: str = "") -> None:
        self.calls: list[str] = []
        self.states = {unit: "active" for unit in remote_lab.TRACKER_UNITS} | {remote_lab.REPLICA_UNIT: replica}
        self.backup_error: LabError | None = None
        self.stop_error: LabError | None = None
        self.catch_up = catch_up or '{"caught_up": true, "dbs": {"mlflow.db": {"txid": 9, "replica_txid": 9}}}'
        self.lab: Any = SimpleNamespace(tracker=TRACKER, access=None)
        monkeypatch.setattr(remote_lab, "units_state", lambda lab, host: dict(self.states))
        monkeypatch.setattr(remote_lab.remote, "run", self.run)
        monkeypatch.setattr(remote_lab, "agent", self.agent)
        monkeypatch.setattr(remote_lab, "backup", self.backup)

    def run(self, access: Any, host: remote.Host, command: list[str], **_: Any) -> None:
        self.calls.append(" ".join(command))
        if "stop" in command and self.stop_error:
            raise self.stop_error

    def agent(self, lab: Any, *args: str, timeout: float = 0) -> str:
        self.calls.append(f"agent {args[0]}")
        if self.catch_up.startswith("error:"):
            raise LabError(f"on tracker: {self.catch_up.removeprefix('error: ')}")
        return self.catch_up

    def backup(self, lab: Any, *, reason: str, say: Any) -> tuple[Any, dict[str, Any]]:
        self.calls.append(f"backup {reason}")
        if self.backup_error:
            raise self.backup_error
        return SimpleNamespace(path=Path("/backups/x")), {}


STOP = "sudo -n systemctl stop lab-mlflow.service lab-optuna.service lab-optuna-dashboard.service"
START = "sudo -n systemctl start lab-mlflow.service lab-optuna.service lab-optuna-dashboard.service"


def test_writes_stop_then_the_replica_catches_up_then_the_backup(monkeypatch):
    tracker, said = Tracker(monkeypatch), []
    made, caught_up = remote_lab.down_backup(tracker.lab, say=said.append, restart=True)
    assert tracker.calls == [STOP, "agent replica-catch-up", "backup down"]
    assert caught_up is True and made.path == Path("/backups/x")
    assert "replica caught up with mlflow.db (transaction 9)" in said


@pytest.mark.parametrize(
    ("replica", "catch_up", "warning"),
    [
        ("inactive", "", "the replica is not running on the tracker"),
        ("active", "error: the replica did not catch up with mlflow.db: timeout", "the replica did not catch up"),
        ("active", "not json", "an answer that is not JSON"),
    ],
)
def test_a_replica_that_cannot_catch_up_is_a_warning_and_the_backup_is_taken(monkeypatch, replica, catch_up, warning):
    tracker, said = Tracker(monkeypatch, replica=replica, catch_up=catch_up), []
    made, caught_up = remote_lab.down_backup(tracker.lab, say=said.append, restart=True)
    assert caught_up is False and made is not None
    assert tracker.calls[-1] == "backup down"
    assert any(line.startswith("warning: ") and warning in line for line in said), said


def test_a_failed_backup_starts_mlflow_and_the_proxy_again(monkeypatch):
    tracker = Tracker(monkeypatch)
    tracker.backup_error = LabError("on tracker: Permission denied: /srv/lab/backups")
    with pytest.raises(remote_lab.ServingAgain) as raised:
        remote_lab.down_backup(tracker.lab, say=lambda line: None, restart=True)
    assert tracker.calls == [STOP, "agent replica-catch-up", "backup down", START]
    assert raised.value.cause is tracker.backup_error
    assert "(MLflow and the Optuna proxy are running again)" in raised.value.one_line()


def test_a_forced_down_leaves_them_stopped_and_an_unreachable_tracker_is_its_own_error(monkeypatch):
    tracker = Tracker(monkeypatch)
    tracker.backup_error = LabError("on tracker: Permission denied")
    with pytest.raises(LabError) as raised:
        remote_lab.down_backup(tracker.lab, say=lambda line: None, restart=False)
    assert raised.value is tracker.backup_error and START not in tracker.calls
    # gcp's teardown tells a tracker it cannot reach (it then has the VM back itself up as it stops) by the type.
    tracker = Tracker(monkeypatch)
    tracker.stop_error = remote.Unreachable(TRACKER, "Connection timed out")
    with pytest.raises(remote.Unreachable):
        remote_lab.down_backup(tracker.lab, say=lambda line: None, restart=True)
    assert tracker.calls == [STOP]


def test_a_tracker_that_serves_nothing_is_backed_up_without_stopping_or_starting(monkeypatch):
    tracker = Tracker(monkeypatch, replica="inactive")
    tracker.states.update({unit: "inactive" for unit in remote_lab.SERVING})
    tracker.backup_error = LabError("on tracker: no DB")
    with pytest.raises(LabError) as raised:
        remote_lab.down_backup(tracker.lab, say=lambda line: None, restart=True)
    assert not isinstance(raised.value, remote_lab.ServingAgain)
    assert tracker.calls == ["backup down"]
