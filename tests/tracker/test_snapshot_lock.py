"""Two snapshots at once (the hourly timer and a `lab down` from cron), as two real processes on one folder."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import ROOT
from tests.tracker.test_backups import tracker_with_db
from toolkit.errors import LabError
from toolkit.tracker import backups

# A snapshot slowed down step by step (the progress callback sleeps), so a second one starts while it runs.
SLOW_SNAPSHOT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from toolkit.tracker import backups
    made = backups.take(
        Path(sys.argv[1]), Path(sys.argv[2]), stack="dev", reason="timer", progress=lambda done, total: time.sleep(0.4)
    )
    print(json.dumps({"id": made.manifest.id, "done": time.time()}))
    """
)

HOLD_LOCK = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"{os.getpid()}\\n".encode())
    print("held", flush=True)
    time.sleep(60)
    """
)


def python(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_a_second_snapshot_waits_for_the_first_and_neither_loses_its_work(tmp_path):
    tracker = tracker_with_db(tmp_path / "tracker", rows=400_000)
    folder = tmp_path / "backups"
    first = python("-c", SLOW_SNAPSHOT, str(tracker), str(folder))
    deadline = time.monotonic() + 60
    while not list(folder.glob(".incoming-*/mlflow.db")):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # The first one is writing its copy: a second snapshot (the agent, as the timer runs it) starts now.
    second = python("-m", "toolkit.tracker.agent", "backup", "--data", str(tmp_path), "--reason", "down", "--json")
    out_second, err_second = second.communicate(timeout=120)
    second_done = time.time()
    out_first, err_first = first.communicate(timeout=120)
    assert first.returncode == 0, err_first
    assert second.returncode == 0, err_second
    made_first, made_second = json.loads(out_first), json.loads(out_second)
    assert made_first["done"] <= second_done, "the second snapshot waited for the first to finish"
    assert made_first["id"] < made_second["id"]
    kept = backups.listing(folder)
    assert [b.manifest.id for b in kept] == [made_second["id"], made_first["id"]]
    for backup in kept:
        assert backups.verify(backup.path).files[0].counts == {"runs": 400_000}
    assert not list(folder.glob(".incoming-*"))


def test_a_snapshot_waits_a_bounded_time_then_fails_in_one_line(tmp_path):
    tracker = tracker_with_db(tmp_path / "tracker")
    folder = tmp_path / "backups"
    folder.mkdir()
    holder = python("-c", HOLD_LOCK, str(folder / backups.LOCK))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(LabError) as raised:
            backups.take(tracker, folder, stack="dev", lock_wait_s=1)
        # waited its 1 s, not the default LOCK_WAIT_S (600 s); generous above for a loaded machine
        assert 1 <= time.monotonic() - started < 60
        assert raised.value.one_line() == (
            f"another snapshot (pid {holder.pid}) is being taken in {folder} and did not finish within 1 s; "
            "try again once it has finished"
        )
        assert backups.listing(folder) == [] and not list(folder.glob(".incoming-*"))
    finally:
        holder.kill()
        holder.communicate()
    # The lock goes with its process: the next snapshot takes it at once.
    assert backups.take(tracker, folder, stack="dev", lock_wait_s=1).manifest.files[0].counts == {"runs": 100}
