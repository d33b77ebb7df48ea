"""A service's record knows its process by when it started, and a wall-clock step does not make it forget.

psutil's create_time is /proc/stat's btime (whole seconds, moved by NTP and suspends) plus the process's start in
ticks after boot, read again on every call: the same process can read a second apart. That made `lab up` report
a starting MLflow as "exited while starting" in CI. These start a real process as `lab up` does."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from toolkit.tracker import services

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the ticks after boot are Linux's")


@pytest.fixture
def record(tmp_path: Path) -> Iterator[services.Record]:
    with warnings.catch_warnings():  # services.start leaves the process running, as `lab up` does
        warnings.simplefilter("ignore", ResourceWarning)
        made = services.start(
            "sleeper",
            [sys.executable, "-c", "import time; time.sleep(120)"],
            run_dir=tmp_path / "run",
            log=tmp_path / "logs" / "sleeper.log",
            port=1,
            url="http://127.0.0.1:1",
            health_url="http://127.0.0.1:1/health",
            env=dict(os.environ),
        )
    yield made
    with contextlib.suppress(OSError):  # our child: killed and reaped here (`lab up` exits and init reaps it)
        os.kill(made.pid, signal.SIGKILL)
        os.waitpid(made.pid, 0)


def test_a_record_knows_its_running_process(record: services.Record) -> None:
    assert record.boot_start is not None and record.boot_start > 0
    assert services.read(Path(record.log).parent.parent / "run", "sleeper") == record
    assert services.is_running(record)


def test_a_wall_clock_step_between_reads_still_finds_the_process(record: services.Record) -> None:
    for step in (1.0, -1.0, 3600.0):  # btime moving a second either way; a suspend or clock set moves more
        assert services.is_running(dataclasses.replace(record, create_time=record.create_time + step)), step


def test_another_process_with_the_same_pid_is_not_the_record_s(record: services.Record) -> None:
    assert record.boot_start is not None
    recycled = dataclasses.replace(record, boot_start=record.boot_start - 1.0)  # same PID, started earlier
    assert not services.is_running(recycled)


def test_an_older_record_without_boot_start_compares_the_create_time(record: services.Record) -> None:
    older = dataclasses.replace(record, boot_start=None)
    assert services.is_running(older)
    assert not services.is_running(dataclasses.replace(older, create_time=record.create_time - 5.0))


def test_a_process_that_ended_is_not_running(record: services.Record) -> None:
    os.kill(record.pid, signal.SIGTERM)
    os.waitpid(record.pid, 0)
    assert not services.is_running(record)
