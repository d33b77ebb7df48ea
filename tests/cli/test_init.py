"""`lab init`: a stack file from flags or questions, judged by the same rules as `lab config validate`."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import LAB, ROOT, Ran

GCP_FLAGS = ("--project", "my-lab-project", "--zone", "us-central1-a", "--ssh-cidr", "203.0.113.7/32")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder of its own (Pulumi.yaml only), so no test touches the checkout's stack files."""
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(ROOT / "Pulumi.yaml", folder / "Pulumi.yaml")
    return folder


@pytest.fixture
def init(project: Path):
    """`lab init` as a script runs it: stdin is no terminal (never the one pytest was started from)."""

    def run(*args: str, env: dict[str, str] | None = None) -> Ran:
        merged = {**os.environ, "COLUMNS": "200", "LAB_PROJECT_DIR": str(project), **(env or {})}
        done = subprocess.run(
            [str(LAB), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=merged,
            timeout=60,
            check=False,
        )
        return Ran(done.returncode, done.stdout, done.stderr)

    return run


def config_of(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["config"]


def test_gcp_stack_from_flags_without_a_terminal(init, project):
    ran = init("init", *GCP_FLAGS, "--zones", "us-central1-a,us-central1-b", "--zones", "us-central1-f")
    assert ran.code == 0, ran.err
    path = project / "Pulumi.dev.yaml"
    assert f"wrote {path}" in ran.out
    assert config_of(path) == {
        "lab:target": "gcp",
        "gcp:project": "my-lab-project",
        "gcp:region": "us-central1",  # the zone's
        "gcp:zone": "us-central1-a",
        "lab:zones": ["us-central1-a", "us-central1-b", "us-central1-f"],
        "lab:workers": 1,
        "lab:workerMachineType": "a2-highgpu-1g",
        "lab:allowedSshCidrs": ["203.0.113.7/32"],
    }
    # Commented like Pulumi.dev.yaml: a header, and each key's meaning above it.
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# The dev stack, written by `lab init`")
    keys = [i for i, line in enumerate(lines) if line.startswith("  ") and not line.lstrip().startswith(("#", "-"))]
    assert keys and all(lines[i - 1].lstrip().startswith("# ") for i in keys)
    assert "secrets use a passphrase: set PULUMI_CONFIG_PASSPHRASE_FILE" in path.read_text()
    checked = init("config", "validate")
    assert checked.code == 0, checked.err
    assert f"{path} is valid (target gcp, 1 spot worker a2-highgpu-1g" in checked.out


def test_state_backend_and_secrets_provider_are_written(init, project, tmp_path):
    kms = "gcpkms://projects/p/locations/global/keyRings/lab/cryptoKeys/state"
    ran = init(
        "init",
        "--stack",
        "kms",
        *GCP_FLAGS,
        "--workers",
        "0",
        "--worker-machine-type",
        "g2-standard-8",
        "--state-backend",
        f"file://{tmp_path / 'state'}",
        "--secrets-provider",
        kms,
    )
    assert ran.code == 0, ran.err
    written = config_of(project / "Pulumi.kms.yaml")
    assert written["lab:stateBackend"] == f"file://{tmp_path / 'state'}"
    assert written["lab:secretsProvider"] == kms
    assert written["lab:workers"] == 0
    assert "lab:zones" not in written  # derived from gcp:zone
    zones = init("init", "--stack", "zones", *GCP_FLAGS, "--zones", "us-central1-b,us-central1-c")
    assert zones.code == 0, zones.err
    assert config_of(project / "Pulumi.zones.yaml")["lab:zones"] == ["us-central1-a", "us-central1-b", "us-central1-c"]
    assert "secrets use a passphrase" not in (project / "Pulumi.kms.yaml").read_text()
    assert init("config", "validate", "--stack", "kms").code == 0


def test_missing_values_without_a_terminal_name_their_flags(init, project):
    ran = init("init", "--project", "my-lab-project")
    assert ran.code == 2
    assert ran.err.strip() == (
        "error: missing for the gcp target: gcp:zone (--zone), lab:allowedSshCidrs (--ssh-cidr); "
        "pass them as flags, or run lab init in a terminal to be asked"
    )
    assert not (project / "Pulumi.dev.yaml").exists()


def test_every_invalid_value_is_named_and_nothing_is_written(init, project):
    ran = init(
        "init",
        "--project",
        "Bad_Project",
        "--region",
        "us-central1",
        "--zone",
        "europe-west4-a",
        "--ssh-cidr",
        "0.0.0.0/0",
        "--workers",
        "-1",
        "--state-backend",
        "s3://elsewhere",
    )
    assert ran.code == 1
    *problems, last = ran.err.strip().splitlines()
    assert last == "error: 5 problems in the answers; nothing was written; fix them and run lab init again"
    named = {line.split(": ", 1)[0] for line in problems}
    assert named == {
        "gcp:project (--project)",
        "gcp:zone (--zone)",
        "lab:allowedSshCidrs (--ssh-cidr)",
        "lab:workers (--workers)",
        "lab:stateBackend (--state-backend)",
    }
    assert "opens SSH to the whole internet" in ran.err
    assert not (project / "Pulumi.dev.yaml").exists()


def test_an_existing_stack_file_is_kept_unless_forced(init, project):
    path = project / "Pulumi.dev.yaml"
    path.write_text("config:\n  lab:target: local\n")
    ran = init("init", *GCP_FLAGS)
    assert ran.code == 1
    assert ran.err.strip() == (
        f"error: {path} already exists; lab init does not overwrite a stack file; "
        "pass --force to replace it, or choose another --stack"
    )
    assert path.read_text() == "config:\n  lab:target: local\n"
    forced = init("init", *GCP_FLAGS, "--force")
    assert forced.code == 0, forced.err
    assert config_of(path)["lab:target"] == "gcp"
    assert not list(project.glob(".*.tmp"))


def test_ssh_target(init, project):
    ran = init(
        "init",
        "-s",
        "boxes",
        "--target",
        "ssh",
        "--tracker-host",
        "10.0.0.5",
        "--worker-host",
        "gpu-box-1",
        "--worker-host",
        "gpu-box-2",
    )
    assert ran.code == 0, ran.err
    assert config_of(project / "Pulumi.boxes.yaml") == {
        "lab:target": "ssh",
        "lab:trackerHost": "10.0.0.5",
        "lab:workerHosts": ["gpu-box-1", "gpu-box-2"],
    }
    checked = init("config", "validate", "--stack", "boxes")
    assert checked.code == 0, checked.err
    assert "is valid (target ssh)" in checked.out


def test_ssh_target_needs_its_tracker_and_refuses_gcp_flags(init, project):
    missing = init("init", "--target", "ssh")
    assert missing.code == 2
    assert "lab:trackerHost (--tracker-host)" in missing.err
    wrong = init("init", "--target", "ssh", "--tracker-host", "t", "--zone", "us-central1-a", "--workers", "2")
    assert wrong.code == 2
    assert wrong.err.strip().startswith("error: --zone, --workers are not used by the ssh target")
    duplicate = init("init", "--target", "ssh", "--tracker-host", "box", "--worker-host", "box")
    assert duplicate.code == 1
    assert "lab:workerHosts (--worker-host): box is listed twice" in duplicate.err
    assert not list(project.glob("Pulumi.*.yaml"))


def test_local_target_and_a_stack_given_as_a_path(init, tmp_path):
    path = tmp_path / "elsewhere" / "Pulumi.mine.yaml"
    path.parent.mkdir()
    ran = init("init", "--stack", str(path), "--target", "local")
    assert ran.code == 0, ran.err
    assert config_of(path) == {"lab:target": "local"}
    assert init("config", "validate", "--stack", str(path)).code == 0


def test_bad_stack_name(init):
    ran = init("init", "--stack", "no spaces", "--target", "local")
    assert ran.code == 2
    assert "'no spaces' is not a stack name" in ran.err


class Terminal:
    """`lab init` on a pseudo-terminal: answers each question as it appears."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        self.process = subprocess.Popen(
            [str(LAB), *args], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
        )
        os.close(slave)
        self.seen = ""

    def expect(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            assert time.monotonic() < deadline, f"never saw {text!r}; saw:\n{self.seen}"
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    self.seen += os.read(self.master, 4096).decode(errors="replace")
                except OSError:  # the program ended and closed the terminal
                    assert text in self.seen, f"never saw {text!r}; saw:\n{self.seen}"

    def answer(self, question: str, reply: str) -> None:
        self.expect(question)
        self.seen = self.seen[self.seen.index(question) + len(question) :]
        os.write(self.master, reply.encode() + b"\r")

    def finish(self) -> int:
        code = self.process.wait(timeout=30)
        os.close(self.master)
        return code


def test_questions_in_a_terminal(project):
    env = {**os.environ, "LAB_PROJECT_DIR": str(project), "COLUMNS": "200", "TERM": "dumb"}
    term = Terminal(["init", "--stack", "asked", "--project", "my-lab-project"], env)
    term.answer("Target (gcp, ssh, local) [gcp]:", "")
    term.answer("Zone the lab runs in", "us-central1")  # a region, not a zone: asked again
    term.expect("'us-central1' is not a zone name such as us-central1-a")
    term.answer("Zone the lab runs in", "us-central1-b")
    term.answer("when us-central1-b has no spot capacity", "us-central1-c, us-central1-a")
    term.answer("GPU workers [1]:", "2")
    term.answer("Worker machine type", "")
    term.answer("Address ranges that may reach SSH", "0.0.0.0/0")
    term.expect("opens SSH to the whole internet")
    term.answer("Address ranges that may reach SSH", "198.51.100.4/32")
    term.answer("Where Pulumi keeps state", "")
    term.answer("Pulumi.asked.yaml? [Y/n]:", "y")
    term.expect("next: lab config validate --stack asked")
    assert term.finish() == 0, term.seen
    assert config_of(project / "Pulumi.asked.yaml") == {
        "lab:target": "gcp",
        "gcp:project": "my-lab-project",
        "gcp:region": "us-central1",
        "gcp:zone": "us-central1-b",
        "lab:zones": ["us-central1-b", "us-central1-c", "us-central1-a"],
        "lab:workers": 2,
        "lab:workerMachineType": "a2-highgpu-1g",
        "lab:allowedSshCidrs": ["198.51.100.4/32"],
    }


def test_yes_asks_nothing_even_in_a_terminal(project):
    env = {**os.environ, "LAB_PROJECT_DIR": str(project), "COLUMNS": "200", "TERM": "dumb"}
    term = Terminal(["init", "--yes", "--project", "my-lab-project"], env)
    term.expect("missing for the gcp target: gcp:zone (--zone)")
    assert term.finish() == 2
    assert "[gcp]:" not in term.seen  # no question was asked
    assert not (project / "Pulumi.dev.yaml").exists()


def test_declining_in_a_terminal_writes_nothing(project):
    env = {**os.environ, "LAB_PROJECT_DIR": str(project), "COLUMNS": "200", "TERM": "dumb"}
    term = Terminal(["init", "--target", "local"], env)
    term.answer("Pulumi.dev.yaml? [Y/n]:", "n")
    term.expect("nothing was written")
    assert term.finish() == 1
    assert not (project / "Pulumi.dev.yaml").exists()
