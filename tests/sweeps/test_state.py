"""How `lab sweep watch` and `lab sweeps` read a detached sweep's state (toolkit/sweeps/service.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from toolkit.errors import LabError
from toolkit.sweeps import dispatch, service


def _state(folder: Path, status: str) -> None:
    service.write_state(folder, {"name": folder.name, "status": status, "updated": time.time()})


def test_a_sweep_whose_process_is_gone_without_a_final_state_reads_failed(tmp_path: Path) -> None:
    folder = tmp_path / "gone"
    folder.mkdir()
    _state(folder, "running")
    state = service.read_state(folder)
    assert state is not None and state["status"] == "failed"
    assert "ended without a word" in state["error"]


def test_a_sweep_that_ends_between_the_two_reads_reads_as_it_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race CI hit (test_a_detached_sweep_goes_on_without_the_laptop): the reader saw "running", then the process
    # wrote "finished" and let go of its lock, then the reader found no holder and called the sweep killed.
    folder = tmp_path / "ends"
    folder.mkdir()
    _state(folder, "running")
    real_running = service.running

    def ends_now(where: Path) -> int | None:
        _state(where, "finished")  # the process's last write, just before it lets go of run.lock
        return real_running(where)

    monkeypatch.setattr(service, "running", ends_now)
    state = service.read_state(folder)
    assert state is not None and state["status"] == "finished", state
    assert "error" not in state


def test_a_running_sweep_reads_running_while_its_process_holds_the_lock(tmp_path: Path) -> None:
    folder = tmp_path / "live"
    folder.mkdir()
    refusal = LabError("held")
    with dispatch.pid_lock(folder / "run.lock", "live", refusal):
        _state(folder, "running")
        state = service.read_state(folder)
        assert state is not None and state["status"] == "running"
    assert json.loads((folder / "state.json").read_text())["status"] == "running"
    assert (service.read_state(folder) or {})["status"] == "failed"
