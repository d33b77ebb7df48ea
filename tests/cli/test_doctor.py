"""`lab doctor`: each prerequisite found or missing, with the command that fixes it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def machine(tmp_path, isolated):
    """A machine with every gcp prerequisite: a real SSH key, credentials, and a pulumi on PATH.

    The Pulumi CLI cannot be installed here (its installer downloads a binary), so a script answers
    `pulumi version` the way the real one does; doctor only asks it for its version.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("ssh", "ansible-playbook"):
        found = shutil.which(program) or shutil.which(program, path=str(Path(sys.executable).parent))
        assert found, f"{program} must be installed for this test"
        (bin_dir / program).symlink_to(found)
    set_pulumi_version(bin_dir, "v3.272.0")
    ssh_dir = isolated / ".ssh"
    ssh_dir.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_dir / "id_ed25519")], check=True)
    credentials = tmp_path / "adc.json"
    credentials.write_text(json.dumps({"type": "authorized_user"}))
    return {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "GOOGLE_APPLICATION_CREDENTIALS": str(credentials),
        "bin": bin_dir,
        "ssh": ssh_dir,
    }


def set_pulumi_version(bin_dir: Path, version: str) -> None:
    fake = bin_dir / "pulumi"
    fake.write_text(f'#!/bin/sh\n[ "$1" = version ] && echo {version}\n')
    fake.chmod(0o755)


def env_of(machine: dict) -> dict[str, str]:
    return {k: v for k, v in machine.items() if isinstance(v, str)}


def checks(ran) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(ran.out)["checks"]}


def test_ready_machine_passes(lab, machine):
    ran = lab("doctor", "--target", "gcp", env=env_of(machine))
    assert ran.code == 0, ran.out + ran.err
    assert "ready for the gcp target" in ran.out
    found = checks(lab("doctor", "--target", "gcp", "--json", env=env_of(machine)))
    assert found["pulumi CLI"]["ok"] and "v3.272.0" in found["pulumi CLI"]["detail"]
    assert found["SSH key"]["ok"] and found["GCP credentials"]["ok"]


def test_missing_pulumi_names_the_fix(lab, machine):
    (machine["bin"] / "pulumi").unlink()
    ran = lab("doctor", "--target", "gcp", env=env_of(machine))
    assert ran.code == 1
    assert "curl -fsSL https://get.pulumi.com | sh" in ran.out
    assert ran.err.strip() == "error: the gcp target is missing: pulumi CLI; run the fixes above"


def test_old_pulumi_is_refused(lab, machine):
    set_pulumi_version(machine["bin"], "v3.99.1")
    found = checks(lab("doctor", "--target", "gcp", "--json", env=env_of(machine)))
    assert not found["pulumi CLI"]["ok"]
    assert "is v3.99.1; the lab needs v3.150.0 or newer" in found["pulumi CLI"]["detail"]


def test_missing_credentials_and_key(lab, machine):
    shutil.rmtree(machine["ssh"])
    env = env_of(machine)
    del env["GOOGLE_APPLICATION_CREDENTIALS"]
    ran = lab("doctor", "--target", "gcp", env=env)
    assert ran.code == 1
    assert "gcloud auth application-default login" in ran.out
    assert f"ssh-keygen -t ed25519 -f {machine['ssh'] / 'id_ed25519'}" in ran.out
    assert "SSH key, GCP credentials" in ran.err


def test_private_key_readable_by_others(lab, machine):
    (machine["ssh"] / "id_ed25519").chmod(0o644)
    found = checks(lab("doctor", "--target", "ssh", "--json", env=env_of(machine)))
    assert not found["SSH key"]["ok"]
    assert found["SSH key"]["fix"] == f"chmod 600 {machine['ssh'] / 'id_ed25519'}"


def test_key_path_comes_from_the_stack(lab, machine, tmp_path):
    stack = tmp_path / "Pulumi.mine.yaml"
    stack.write_text(f"config:\n  lab:target: ssh\n  lab:sshPublicKeyPath: {tmp_path / 'other.pub'}\n")
    ran = lab("doctor", "--stack", str(stack), "--json", env=env_of(machine))
    assert json.loads(ran.out)["target"] == "ssh"
    assert f"no public key at {tmp_path / 'other.pub'}" in checks(ran)["SSH key"]["detail"]


def test_unwritable_lab_home(lab, machine, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    ran = lab("doctor", "--target", "local", "--json", env={**env_of(machine), "LAB_HOME": str(blocker / "lab")})
    assert ran.code == 1
    assert not checks(ran)["LAB_HOME"]["ok"]


def test_no_stack_file_means_the_local_target(lab, machine, tmp_path):
    env = {**env_of(machine), "LAB_PROJECT_DIR": ""}
    ran = lab("doctor", "--stack", "nothing-here", "--json", env=env)
    assert json.loads(ran.out)["target"] == "local"
    assert os.environ["HOME"] in checks(ran)["LAB_HOME"]["detail"]
