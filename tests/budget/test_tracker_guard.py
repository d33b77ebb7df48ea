"""The tracker's budget guard runs as root and trusts nothing the tracker's service user can write (issue 26 finding
2): what it writes in that user's folders it writes as that user, in a child process, so a link the user planted
leads nowhere root could write; a malformed budget is a one-line error each look, never an exit. Here the service
user is `nobody` (the guard's child really switches to it: these tests need root, as the guard does)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from toolkit.budget import tracker
from toolkit.budget.spend import OK, WARN, Verdict
from toolkit.errors import LabError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the guard's child switches user: needs root")
USER = "nobody"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's: the child needs nothing but the standard library and the toolkit
TOOLKIT = Path(tracker.__file__).resolve().parents[1]


@pytest.fixture
def data() -> Iterator[Path]:
    """The tracker's data folder, the service user's (under a folder everyone may pass through), beside a copy of
    the toolkit that user can read (this checkout, and this venv's Python under /root, may be root's alone)."""
    top = Path(tempfile.mkdtemp(prefix="lab-guard-", dir="/tmp"))  # not $TMPDIR: the per-test one is root's alone
    top.chmod(0o755)
    shutil.copytree(TOOLKIT, top / "src" / "toolkit", ignore=shutil.ignore_patterns("__pycache__"))
    for path in (top / "src", *(top / "src").rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    folder = top / "data"
    (folder / "sweeps" / "s1").mkdir(parents=True)
    entry = pwd.getpwnam(USER)
    for path in (folder, folder / "sweeps", folder / "sweeps" / "s1"):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    yield folder
    shutil.rmtree(top)


def place(data: Path) -> tracker.TrackerPlace:
    state = data.parent / "guard"
    state.mkdir(mode=0o700, exist_ok=True)
    return tracker.TrackerPlace(data, state, USER, python=(SYSTEM_PYTHON, str(data.parent / "src")))


def warning() -> Verdict:
    return Verdict(WARN, 8.5, 10.0, 0.0, 1.0, None, "$8.50 of the $10.00 budget spent (85%)")


def test_what_the_guard_writes_for_the_sweeps_is_written_as_the_service_user(data):
    guard = place(data)
    guard.publish(warning())
    shown = data / "sweeps" / "budget.json"
    assert shown.stat().st_uid == pwd.getpwnam(USER).pw_uid
    assert json.loads(shown.read_text())["line"] == warning().line()
    guard.note_sweeps(["s1"], "budget warning: a line for the log")
    log = data / "sweeps" / "s1" / "dispatch.log"
    assert log.stat().st_uid == pwd.getpwnam(USER).pw_uid and "a line for the log" in log.read_text()
    guard.publish(Verdict(OK, 1.0, 10.0, 0.0, 1.0, None, ""))
    assert not shown.exists(), "all well again: the warning is gone"


def test_a_link_the_service_user_planted_leads_nowhere_root_could_write(data, tmp_path, capsys):
    victim = tmp_path / "victim"  # root's, in a folder the service user cannot even reach
    victim.write_text("untouched\n")
    (data / "sweeps" / "budget.json.partial").symlink_to(victim)
    (data / "sweeps" / "s1" / "dispatch.log").symlink_to(victim)
    guard = place(data)
    guard.publish(warning())  # refused, and said: a planted link never stops the guard from looking and stopping
    guard.note_sweeps(["s1"], "budget warning")
    said = capsys.readouterr().out
    assert "as nobody, `publish` failed:" in said and "as nobody, `note` failed:" in said, said
    assert said.count("Permission denied") == 2, said
    assert victim.read_text() == "untouched\n"


def test_a_malformed_budget_is_a_line_each_look_and_the_guard_keeps_running(data):
    guard = place(data)
    budget = {"limits": {"budget_usd": "ten", "no_such_limit": 1}, "ledger": {}, "periods": []}
    guard.ledger_path.write_text(json.dumps(budget))
    with pytest.raises(LabError, match=r"is malformed: TypeError"):
        guard.verdict()
    argv = [sys.executable, "-m", "toolkit.budget.guard", "tracker", "--data", str(data)]
    argv += ["--state", str(guard.ledger_path.parent), "--user", USER, "--every", "0.2"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(3)
        assert process.poll() is None, process.communicate()[0][-2000:]
    finally:
        process.terminate()
        said = process.communicate(timeout=30)[0]
    assert said.count("is malformed") >= 3, said[-2000:]  # said at each look, one line each
    assert all(len(line) < 400 for line in said.splitlines()), said[-2000:]
