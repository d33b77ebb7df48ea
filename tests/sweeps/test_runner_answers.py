"""A slot's runner is not trusted (issue 26 finding 3): on a worker, anything running as the login user (notebook
code included) can write what the dispatcher reads. Real runner-shaped processes (a shell script printing what a
hostile runner would) answer a real `slots.drive`: outcomes are only those a runner may give ("lost" is the
dispatcher's alone), logs and errors are bounded and stripped of terminal control sequences, an answer too long
to be one is left out, and nothing a runner says crashes the slot."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest

from toolkit.sweeps import slots


def runner_saying(tmp_path: Path, *answers: str) -> slots.RunnerProcess:
    """A process that reads its job, then prints these lines (raw: they need not be JSON) and waits."""
    script = tmp_path / "runner.py"
    script.write_text(
        "import sys, time\nsys.stdin.readline()\n"
        f"for line in {list(answers)!r}:\n    sys.stdout.write(line)\n    sys.stdout.flush()\n"
        "time.sleep(60)\n"
    )
    return slots.RunnerProcess([sys.executable, str(script)], None)


def drive(tmp_path: Path, *answers: str) -> tuple[slots.Outcome, Path]:
    job = slots.Job(tmp_path / "nb.ipynb", tmp_path / "out.ipynb", {}, {}, log=tmp_path / "trial.log")
    runner = runner_saying(tmp_path, *answers)
    try:
        outcome, _ = slots.drive(runner, job, threading.Event(), {"job": 1})
    finally:
        runner.kill()
    return outcome, job.log  # type: ignore[return-value]


def line(**answer: object) -> str:
    return json.dumps(answer) + "\n"


@pytest.mark.parametrize("kind", ["lost", "cancelled", "timeout", "bogus", 7, None])
def test_an_outcome_a_runner_may_not_give_is_died(tmp_path, kind):
    outcome, _ = drive(tmp_path, line(event="done", kind=kind, error="boom"))
    assert outcome.kind == "died"
    assert "an outcome lab does not know" in outcome.error and outcome.error.endswith("boom")


@pytest.mark.parametrize("kind", slots.RUNNER_OUTCOMES)
def test_the_outcomes_a_runner_may_give_are_taken(tmp_path, kind):
    outcome, _ = drive(tmp_path, line(event="done", kind=kind, error=""))
    assert outcome.kind == kind


def test_terminal_escapes_never_reach_the_log_or_the_error(tmp_path):
    nasty = "\x1b]0;owned\x07\x1b[2J\x1b[31mred\x1b[0m\rback\x08\x9b6n ok\ttab\n"
    outcome, log = drive(
        tmp_path, line(event="log", text=nasty), line(event="done", kind="failed", error=nasty + "Traceback")
    )
    assert log.read_text() == "redback ok\ttab\n"
    assert outcome.error == "redback ok\ttab\nTraceback"
    assert "\x1b" not in outcome.error and "\r" not in log.read_text()


def test_a_flood_of_log_is_cut_at_the_limit_and_said_once(tmp_path, monkeypatch):
    monkeypatch.setattr(slots, "LOG_LIMIT_BYTES", 1000)
    outcome, log = drive(tmp_path, *[line(event="log", text="x" * 300 + "\n")] * 20, line(event="done", kind="ok"))
    assert outcome.kind == "ok"
    text = log.read_text()
    assert text.count("x") == 1000 - text[:1000].count("\n") and len(text) < 1200
    assert text.count("this trial's log passed") == 1


def test_an_answer_too_long_to_be_one_is_left_out_and_the_next_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(slots, "ANSWER_LIMIT_BYTES", 4096)
    huge = line(event="log", text="y" * 50_000)
    outcome, log = drive(tmp_path, huge, line(event="log", text="after\n"), line(event="done", kind="ok"))
    assert outcome.kind == "ok"
    assert "y" not in log.read_text() and "after" in log.read_text()
    assert "left out" in log.read_text()


def test_answers_that_are_not_objects_or_carry_junk_do_not_crash_the_slot(tmp_path):
    outcome, _ = drive(
        tmp_path,
        "[1, 2]\n",
        '"a string"\n',
        "not json\n",
        line(event="started", kernel_pid="not a pid", warm="yes"),
        line(event="done", kind="ok"),
    )
    assert outcome.kind == "ok"
