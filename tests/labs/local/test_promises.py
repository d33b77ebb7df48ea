"""Promises the README makes that nothing checked: `lab down` ends a service that ignores SIGTERM (SIGKILL
after 15 s), `lab backup` rotates by lab:backupKeep and lab:backupDays, and `lab down --destroy-data` asks twice
before it deletes the bucket with every object in it."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import sys
import time
import warnings
from pathlib import Path

import pytest

from tests.conftest import LAB
from toolkit.tracker import backups, services

pytestmark = pytest.mark.slow  # starts labs or services: not in `pytest -m 'not slow'`


def test_down_kills_a_service_that_ignores_sigterm_after_15_s(lab, state, tracker, monkeypatch):
    """The record is a real process (as `lab up` would start it) that ignores SIGTERM, as a hung server does. The wait
    is the test setting's 3 s (LAB_STOP_TIMEOUT_S), not the 15 s a user gets: the same code path, a shorter timer."""
    assert services.STOP_TIMEOUT_S == 15.0 and services.stop_timeout() == 15.0  # what the README promises
    monkeypatch.setenv(services.STOP_TIMEOUT_ENV, "3")
    assert services.stop_timeout() == 3.0
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)",
    ]
    with warnings.catch_warnings():  # services.start leaves the process running, as `lab up` does: on purpose
        warnings.simplefilter("ignore", ResourceWarning)
        record = services.start(
            "mlflow",
            stubborn,
            run_dir=state / "run",
            log=state / "logs" / "mlflow.log",
            port=1,
            url="http://127.0.0.1:1",
            health_url="http://127.0.0.1:1/health",
            env=dict(os.environ),
        )
    deadline = time.monotonic() + 10
    while "up" not in (state / "logs" / "mlflow.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)  # SIGTERM is ignored from here on
    started = time.monotonic()
    ran = lab("down", "--local", timeout=120)
    took = time.monotonic() - started
    assert ran.code == 0, ran.err
    assert f"mlflow killed (pid {record.pid})" in ran.err
    assert 3.0 <= took < 3.0 + 30, f"took {took:.1f} s"
    assert not services.is_running(record)
    assert not (state / "run" / "mlflow.json").exists()


def test_lab_backup_rotates_by_count_and_days(lab, state, tracker, tmp_path):
    stack = tmp_path / "Pulumi.rot.yaml"
    stack.write_text("config:\n  lab:target: local\n  lab:backupKeep: 2\n  lab:backupDays: 0\n")
    folder = state.parent / "rot"
    (folder / "tracker").mkdir(parents=True)
    shutil.copy(tracker / "mlflow.db", folder / "tracker" / "mlflow.db")
    made = []
    for _ in range(4):
        ran = lab("backup", "--local", "--stack", str(stack), "--json")
        assert ran.code == 0, ran.err
        made.append(json.loads(ran.out)["id"])
    kept = [b.manifest.id for b in backups.listing(folder / "backups")]
    assert kept == made[:1:-1], "the newest two stay, newest first"


ANSI = re.compile(r"\x1b\[[0-9;]*m")  # a terminal gets rich's colours


def converse(argv: list[str], answers: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """Run a command on a terminal (a pty, as a person at a keyboard) and answer each question it asks."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(argv[0], argv, env)  # noqa: S606 -- the child of pty.fork becomes the command
    seen, pending = b"", list(answers)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
            if pending and seen.rstrip().endswith(b"]:"):
                os.write(fd, pending.pop(0).encode() + b"\n")
                seen += b"\n"
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), ANSI.sub("", seen.decode(errors="replace"))


@pytest.fixture
def kept_bucket(emulator: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The gcp lab's bucket as `lab down` left it: in GCS with this stack's labels, holding artifacts and
    backups (gcp-storage-emulator; it keeps only the live generation of each object)."""
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    client = storage.Client(project="my-gcp-project")
    name = "my-gcp-project-lab-dev"
    if client.lookup_bucket(name) is None:
        client.create_bucket(name)
    bucket = client.get_bucket(name)
    bucket.labels = {"lab": "dev", "managed-by": "lab", "role": "artifacts"}
    bucket.patch()
    for key in ("mlflow-artifacts/dev/1/model.pkl", "backups/dev/20261201T080000.000000Z/manifest.json"):
        bucket.blob(key).upload_from_string(b"x")
    return name


@pytest.fixture
def gcp_stack(tmp_path: Path) -> Path:
    path = tmp_path / "Pulumi.dev.yaml"
    path.write_text(
        "config:\n  lab:target: gcp\n  gcp:project: my-gcp-project\n  gcp:region: us-central1\n"
        "  gcp:zone: us-central1-a\n  lab:allowedSshCidrs: [203.0.113.0/24]\n"
    )
    return path


def test_destroy_data_asks_twice_and_deletes_the_bucket_only_after_two_yeses(kept_bucket, gcp_stack):
    from google.cloud import storage

    env = {**os.environ, "COLUMNS": "200"}
    argv = [str(LAB), "down", "--destroy-data", "--stack", str(gcp_stack)]
    code, said = converse(argv, ["y", "n"], env)
    assert code == 1, said
    assert "Delete gs://my-gcp-project-lab-dev with every artifact and backup in it, for good?" in said
    assert "Really delete gs://my-gcp-project-lab-dev? This cannot be undone" in said
    assert "not confirmed twice" in said
    client = storage.Client(project="my-gcp-project")
    assert len(list(client.list_blobs(kept_bucket))) == 2, "one yes deletes nothing"
    code, said = converse(argv, ["y", "y"], env)
    assert code == 0, said
    assert "deleted the bucket gs://my-gcp-project-lab-dev" in said
    assert client.lookup_bucket(kept_bucket) is None


def test_destroy_data_without_a_terminal_needs_yes(kept_bucket, gcp_stack, lab):
    ran = lab("down", "--destroy-data", "--stack", str(gcp_stack))
    assert ran.code == 1 and "pass --yes" in ran.err
    ran = lab("down", "--destroy-data", "--yes", "--stack", str(gcp_stack))
    assert ran.code == 0, ran.err
    assert "deleted the bucket gs://my-gcp-project-lab-dev with its artifacts and backups" in ran.out
