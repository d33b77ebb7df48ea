"""Exit codes and messages: 0 ok, 1 a user error in one line, 2 usage, 3 unexpected, 130 Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import LAB, sigint_default
from toolkit import __version__, errors
from toolkit.cli import failures


def test_version(lab):
    from importlib.metadata import version

    ran = lab("--version")
    assert ran.code == 0
    assert ran.out.strip() == f"lab {__version__}" == f"lab {version('lab')}"


def test_usage_errors_exit_2(lab):
    ran = lab("config", "validate", "--no-such-option")
    assert ran.code == 2
    assert "No such option" in ran.err
    ran = lab("no-such-command")
    assert ran.code == 2
    ran = lab("config", "validate", "--target", "aws")
    assert ran.code == 2
    assert "'aws' is not one of" in ran.err
    # A value the command itself finds bad is a usage error too, in one line.
    ran = lab("restore", "--local", "--at", "yesterday")
    assert ran.code == 2 and ran.err.startswith("error: --at 'yesterday' is not a time"), ran.err


def test_user_error_is_one_line_without_traceback(lab):
    ran = lab("config", "show", "--stack", "missing")
    assert ran.code == 1
    assert len(ran.err.strip().splitlines()) == 1
    assert ran.err.startswith("error: ")
    assert "Traceback" not in ran.err and ran.out == ""


def test_debug_shows_the_traceback(lab):
    for ran in (
        lab("--debug", "config", "show", "--stack", "missing"),
        lab("config", "show", "--stack", "missing", env={"LAB_DEBUG": "1"}),
    ):
        assert ran.code == 1
        assert "Traceback" in ran.err
        assert ran.err.strip().splitlines()[-1].startswith("error: no stack file")


def boom() -> None:
    raise RuntimeError("boom")


def test_unexpected_error_exits_3_and_keeps_the_traceback(capsys, isolated):
    code = failures.handle(boom, ["config", "show"])
    assert code == errors.EXIT_UNEXPECTED
    err = capsys.readouterr().err
    assert err.startswith("unexpected error: RuntimeError: boom; the traceback is in ")
    assert "Traceback" not in err
    log = Path(os.environ["LAB_HOME"]) / "crash.log"
    assert "RuntimeError: boom" in log.read_text()


def test_unexpected_error_with_debug_prints_the_traceback(capsys):
    assert failures.handle(boom, ["--debug"]) == errors.EXIT_UNEXPECTED
    assert "Traceback" in capsys.readouterr().err


def test_ctrl_c_exits_130(tmp_path, isolated):
    """Interrupt a real `lab doctor` while it waits on a slow `pulumi version`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    started = tmp_path / "started"
    fake = bin_dir / "pulumi"
    fake.write_text(f"#!/bin/sh\ntouch {started}\nexec sleep 30\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    process = subprocess.Popen(
        [str(LAB), "doctor", "--target", "gcp"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,
    )
    deadline = time.monotonic() + 30
    while not started.exists():
        assert time.monotonic() < deadline, "lab doctor never ran pulumi"
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, (out, err)
    assert err.strip().splitlines()[-1] == "interrupted"
    assert "Traceback" not in err


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "toolkit", "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == f"lab {__version__}"


def test_gcp_lab_that_was_never_up(lab):
    # The shipped dev stack's GCP settings; nothing was ever created and this machine has no Pulumi CLI.
    ran = lab("up", "--target", "gcp", "--yes")
    assert ran.code == 1
    assert "needs the Pulumi CLI" in ran.err and "lab doctor --install-pulumi" in ran.err
    assert len(ran.err.strip().splitlines()) == 1
    ran = lab("down", "--target", "gcp", "--yes")
    assert ran.code == 0, ran.err
    assert "nothing to do" in ran.out
    ran = lab("status", "--target", "gcp")
    assert ran.code == 0, ran.err
    assert "not up" in ran.out
    quickstart = Path(__file__).resolve().parents[2] / "experiments" / "quickstart"
    dispatch = f"dispatch {quickstart / 'quickstart.ipynb'} --space {quickstart / 'space.yml'}"
    for command in ("backup", "tunnel", "ssh tracker", dispatch):
        ran = lab(*command.split()[:1], "--target", "gcp", *command.split()[1:])
        assert ran.code == 1, command
        assert "is not up" in ran.err and "run `lab up`" in ran.err, (command, ran.err)


LIVE_THEN_ERROR = """
from rich.table import Table
from toolkit.cli import failures
from toolkit.console import Ui
from toolkit.errors import LabError

def run():
    with Ui().live() as show:
        show(Table("host", title="a live table whose title is longer than the eighty columns rich takes without a tty"))
        raise LabError("the playbook failed")

raise SystemExit(failures.handle(run, []))
"""


def test_a_live_table_then_an_error_without_a_terminal():
    """Piped (a CI log): the live table's title is not cut at 80 columns, and the error starts a line of its own
    rather than following the table's bottom border."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    ran = subprocess.run([sys.executable, "-c", LIVE_THEN_ERROR], capture_output=True, text=True, env=env, check=False)
    assert ran.returncode == 1, ran.stderr
    lines = ran.stderr.splitlines()
    assert "the eighty columns rich takes without a tty" in lines[0], ran.stderr
    assert lines[-1] == "error: the playbook failed", ran.stderr
