"""A service that never answers is stopped, and the error says where it was stuck: it writes its stacks to its
log on a signal (faulthandler), as the dashboard does. CI once saw optuna-dashboard miss its deadline with
nothing in the error to say why; this is what the next such failure shows."""

from __future__ import annotations

import os
import sys
import threading
import warnings
from pathlib import Path

import pytest

from toolkit.errors import LabError
from toolkit.tracker import dashboard, services

HANGS = """
import faulthandler, signal, sys, time
faulthandler.register(signal.SIGUSR1, all_threads=True)
def open_the_storage():
    print("started", flush=True)
    time.sleep(120)
open_the_storage()
"""


def start(tmp_path: Path, code: str) -> services.Record:
    with warnings.catch_warnings():  # the process is ours to stop, as `lab up` leaves its services running
        warnings.simplefilter("ignore", ResourceWarning)
        record = services.start(
            "hangs",
            [sys.executable, "-c", code],
            run_dir=tmp_path / "run",
            log=tmp_path / "logs" / "hangs.log",
            port=1,
            url="http://127.0.0.1:1",
            health_url="http://127.0.0.1:1/never",
            env=dict(os.environ),
        )
    threading.Thread(target=os.waitpid, args=(record.pid, 0), daemon=True).start()  # reaped as init would
    return record


def wait_for_line(record: services.Record, text: str) -> None:
    for _ in range(200):
        if text in Path(record.log).read_text():
            return
        services.time.sleep(0.05)
    raise AssertionError(Path(record.log).read_text())


def test_a_service_that_never_answers_is_stopped_and_the_error_says_where_it_was(tmp_path: Path) -> None:
    record = start(tmp_path, HANGS)
    wait_for_line(record, "started")
    with pytest.raises(LabError) as raised:
        services.wait_healthy(record, 1.0, stack_signal=dashboard.STACK_SIGNAL)
    message = raised.value.one_line()
    said = "hangs did not answer http://127.0.0.1:1/never within 1 s, stuck at <string>:6 in open_the_storage"
    assert said in message
    assert str(record.log) in message
    assert not services.is_running(record)


def test_without_a_stack_the_error_is_the_plain_one(tmp_path: Path) -> None:
    record = start(tmp_path, "import time; print('started', flush=True); time.sleep(120)")
    wait_for_line(record, "started")
    with pytest.raises(LabError) as raised:
        services.wait_healthy(record, 1.0)
    assert raised.value.one_line().startswith("hangs did not answer http://127.0.0.1:1/never within 1 s; see ")
    assert not services.is_running(record)


def test_the_innermost_frame_is_read_after_the_offset_only(tmp_path: Path) -> None:
    log = tmp_path / "log"
    old = 'Current thread 0x1 (most recent call first):\n  File "old.py", line 1 in old\n'
    new = (
        'Thread 0x2 (most recent call first):\n  File "t.py", line 9 in other\n\n'
        'Current thread 0x3 (most recent call first):\n  File "/x/sqlite.py", line 42 in connect\n'
        '  File "main.py", line 3 in <module>\n'
    )
    log.write_text(old + new)
    assert services.innermost_frame(log, len(old)) == "/x/sqlite.py:42 in connect"
    assert services.innermost_frame(log, len(old + new)) == ""
    assert services.innermost_frame(tmp_path / "missing", 0) == ""
