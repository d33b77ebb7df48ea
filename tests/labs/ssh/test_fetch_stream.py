"""Fetching an executed notebook from a worker has no fixed time limit: it goes on while bytes arrive and
fails (that trial only) when they stop, or when the notebook passes the size a trial may bring back (issue 26
finding 3: the worker's login user can write it). Real processes stand in for `ssh worker cat output.ipynb`: the
checks read only what lands in the file."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from toolkit.sweeps.ssh_slots import SshSlot


def fetch(tmp_path: Path, script: str, stall_s: float, limit: int = 2**30) -> tuple[str, float, Path]:
    sink = tmp_path / "output.ipynb.partial"
    started = time.monotonic()
    with sink.open("wb") as out:
        process = subprocess.Popen(["sh", "-c", script], stdout=out)
        came = SshSlot._stream(process, sink, stall_s, limit)
    return came, time.monotonic() - started, sink


def test_a_slow_fetch_that_keeps_moving_is_not_cut_off(tmp_path):
    # 5 s in all, longer than the stall limit, but a byte at least every 0.5 s.
    came, seconds, sink = fetch(tmp_path, "for i in 1 2 3 4 5 6 7 8 9 10; do printf x; sleep 0.5; done", 2.0)
    assert came == "done" and seconds >= 4.5
    assert sink.read_text() == "x" * 10


def test_a_fetch_that_stalls_fails_soon_after_the_limit_and_is_stopped(tmp_path):
    came, seconds, sink = fetch(tmp_path, "printf '{\"cells\":'; exec sleep 60", 2.0)
    assert came == "stalled"
    assert 2.0 <= seconds < 30.0, seconds  # cut off after the 2 s stall limit, long before the writer's 60 s
    assert sink.read_text() == '{"cells":'


def test_an_endless_notebook_is_cut_off_at_the_limit(tmp_path):
    came, seconds, sink = fetch(tmp_path, "exec yes x", 30.0, limit=4 * 2**20)
    assert came == "too big" and seconds < 30.0
    assert 4 * 2**20 < sink.stat().st_size < 4 * 2**20 + 2**30  # stopped soon after, not at the writer's end


def test_a_notebook_just_over_the_limit_that_ends_at_once_is_too_big(tmp_path):
    came, _, _ = fetch(tmp_path, "head -c 5000 /dev/zero", 30.0, limit=4096)
    assert came == "too big"
    came, _, _ = fetch(tmp_path, "head -c 4096 /dev/zero", 30.0, limit=4096)
    assert came == "done"
