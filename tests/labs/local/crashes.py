"""A local lab killed mid-write, for the replica tests: writers that log runs through MLflow while every
process of the lab is SIGKILLed, and the check that what was acknowledged long enough before came back."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The promise (docs/durability.md): a run acknowledged a second before the kill survives it. Litestream looks
# and ships every 250 ms (toolkit.tracker.replica.SYNC_INTERVAL); benchmarks/replication.py's worst crash on 2
# loaded cores lost writes acknowledged 0.23 s before it.
SURVIVES_AFTER_S = 1.0


def run_names(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT name FROM runs ORDER BY start_time")]


def kill_everything(state: Path) -> None:
    """The machine dies: every service of the lab gets SIGKILL at once (no backup, no final sync)."""
    for record in state.glob("run/*.json"):
        os.killpg(json.loads(record.read_text())["pid"], signal.SIGKILL)


def lose_the_db(state: Path) -> None:
    for path in (state / "tracker").glob("mlflow.db*"):
        path.unlink()


def write_until_killed(
    client: Any, experiment: str, seconds: float, kill: Callable[[], None]
) -> tuple[list[tuple[str, float]], float]:
    """Runs logged through MLflow from a thread while the lab is killed under it: each run's name and when the
    server confirmed it, and when the kill came. (The client must not retry: MLFLOW_HTTP_REQUEST_MAX_RETRIES=0.)"""
    confirmed: list[tuple[str, float]] = []
    stop = threading.Event()

    def write() -> None:
        n = 0
        while not stop.is_set():
            try:
                run = client.create_run(experiment, run_name=f"run-{n}")
                client.log_metric(run.info.run_id, "loss", 1.0 / (n + 1))
            except Exception:  # the server died under the call: that write was never confirmed
                return
            confirmed.append((f"run-{n}", time.monotonic()))
            n += 1

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    time.sleep(seconds)
    killed_at = time.monotonic()
    kill()
    stop.set()
    writer.join(timeout=30)
    assert not writer.is_alive(), "the writer still waits on a server that was killed"
    return confirmed, killed_at


def assert_confirmed_runs_survived(db: Path, confirmed: list[tuple[str, float]], killed_at: float) -> None:
    restored = set(run_names(db))
    must_survive = [name for name, at in confirmed if at < killed_at - SURVIVES_AFTER_S]
    assert len(must_survive) >= 5, f"the writer was too slow to test anything: {len(confirmed)} runs"
    lost = [name for name in must_survive if name not in restored]
    assert not lost, f"{len(lost)} of {len(must_survive)} confirmed runs were lost: {lost[:5]}"
