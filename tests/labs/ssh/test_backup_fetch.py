"""The ssh target's `backup()`: the tracker's answer is checked before it becomes a path, and the fetched copy
is on disk before it is called verified. The tracker agent runs for real on a local data folder; only the SSH
copy is a local one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.tracker.test_backups import tracker_with_db
from toolkit.errors import LabError
from toolkit.labs import ssh as ssh_lab
from toolkit.tracker import backups


def fake_lab(tmp_path: Path) -> Any:
    return SimpleNamespace(
        access=None,
        tracker=SimpleNamespace(name="tracker-1"),
        backups_dir=tmp_path / "laptop" / "backups",
        settings=SimpleNamespace(backup_keep=10, backup_days=14),
        bucket=None,
        stack="dev",
    )


@pytest.fixture
def tracker_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "srv"
    tracker_with_db(data / "tracker")

    def agent(lab: Any, *args: str, timeout: float = 0) -> str:
        command = [sys.executable, "-m", "toolkit.tracker.agent", *args, "--data", str(data), "--stack", lab.stack]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True).stdout

    def fetch_folder(access: Any, host: Any, remote_parent: str, name: str, local_parent: Path) -> Path:
        shutil.copytree(data / "backups" / name, local_parent / name)
        return local_parent / name

    monkeypatch.setattr(ssh_lab, "agent", agent)
    monkeypatch.setattr(ssh_lab.remote, "fetch_folder", fetch_folder)
    return data


def test_the_fetched_backup_is_on_disk_before_it_is_called_verified(tmp_path, tracker_data, disk_events):
    events = disk_events
    lab = fake_lab(tmp_path)
    made, document = ssh_lab.backup(lab, reason="manual", say=lambda _: None)
    (verified,) = [i for i, (what, _) in enumerate(events) if what == "verify"]
    fetched = events[verified][1]
    flushed_before = {path for what, path in events[:verified] if what == "fsync"}
    assert {f"{fetched}/mlflow.db", f"{fetched}/manifest.json", fetched} <= flushed_before
    assert ("fsync", str(lab.backups_dir)) in events[verified:], "the rename into place is flushed too"
    assert made.path == lab.backups_dir / document["id"]
    assert backups.verify(made.path) == made.manifest


@pytest.mark.parametrize("answer", ["../../../.ssh", "zzz", "99999999T999999.999999Z", 7])
def test_a_backup_id_from_the_tracker_that_is_not_one_is_refused(tmp_path, tracker_data, monkeypatch, answer):
    lab = fake_lab(tmp_path)
    monkeypatch.setattr(ssh_lab, "agent", lambda lab, *args, **kwargs: json.dumps({"id": answer}))
    fetched: list[str] = []
    monkeypatch.setattr(ssh_lab.remote, "fetch_folder", lambda *args: fetched.append(args[3]))
    with pytest.raises(LabError, match="tracker-1 answered a backup id that is not one"):
        ssh_lab.backup(lab, reason="manual", say=lambda _: None)
    assert fetched == []
