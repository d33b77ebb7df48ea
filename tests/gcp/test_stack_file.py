"""The stack file after Pulumi wrote into it: the passphrase secrets provider stores `encryptionsalt` at the top
of Pulumi.<stack>.yaml the first time it runs (pkg/secrets/passphrase/manager.go@ec7e8c0d: `v1:` + the base64
salt + `:` + "pulumi" encrypted with the derived key; ProjectStack in sdk/go/common/workspace/project.go@73a66f48
puts it before `config:`, whose plain values it writes as strings). Lab must read that file as before, never call
the key unknown, and keep it when `lab init --force` writes the file again: without the salt the same passphrase
derives another key and the stack's secrets can no longer be decrypted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from toolkit.config import stack

ROOT = Path(__file__).resolve().parents[2]
SALT = "v1:Xq6B4yxzR7U=:v1:l1V0SRoAn5kGDjJB:1o2T2n2VAAZ0TaTw2NI3yJ9xQ3Z0xQ=="
INIT_FLAGS = (
    "--target", "gcp", "--project", "my-gcp-project", "--zone", "us-central1-a",
    "--ssh-cidr", "203.0.113.0/24", "--yes",
)  # fmt: skip
# The same stack as Pulumi leaves it after `pulumi config set`: its own key first, values as strings.
REWRITTEN = f"""encryptionsalt: {SALT}
config:
  gcp:project: my-gcp-project
  gcp:region: us-central1
  gcp:zone: us-central1-a
  lab:allowedSshCidrs:
    - 203.0.113.0/24
  lab:spot: "true"
  lab:target: gcp
  lab:workerMachineType: a2-highgpu-1g
  lab:workers: "1"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder with the lab's Pulumi.yaml, where `lab init` writes Pulumi.dev.yaml."""
    shutil.copy(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    return tmp_path


def test_a_stack_file_with_pulumis_salt_is_read_as_before(project, lab):
    ran = lab("init", *INIT_FLAGS, env={"LAB_PROJECT_DIR": str(project)})
    assert ran.code == 0, ran.err
    path = project / "Pulumi.dev.yaml"
    written = stack.read(str(path))
    settings = stack.load(str(path))[1].settings
    # Pulumi keeping lab's text and adding its key on top, and Pulumi writing the file anew: both read the same.
    path.write_text(f"encryptionsalt: {SALT}\n" + path.read_text())
    kept = stack.read(str(path))
    assert kept.raw == written.raw and kept.pulumi == {"encryptionsalt": SALT}
    path.write_text(REWRITTEN)
    rewritten = stack.read(str(path))
    assert rewritten.pulumi == {"encryptionsalt": SALT}
    assert stack.load(str(path))[1].settings == settings, "the same settings, from values Pulumi wrote as strings"
    ran = lab("config", "validate", "--stack", str(path), env={"LAB_PROJECT_DIR": str(project)})
    assert ran.code == 0, ran.err
    assert "unknown" not in ran.err and "encryptionsalt" not in ran.err
    assert "is valid (target gcp, 1 spot worker a2-highgpu-1g" in ran.out


def test_lab_init_force_keeps_the_salt_pulumi_wrote(project, lab):
    path = project / "Pulumi.dev.yaml"
    path.write_text(REWRITTEN)
    ran = lab("init", *INIT_FLAGS, "--workers", "2", "--force", env={"LAB_PROJECT_DIR": str(project)})
    assert ran.code == 0, ran.err
    document = yaml.safe_load(path.read_text())
    assert document["encryptionsalt"] == SALT, "the passphrase's salt is kept"
    assert document["config"]["lab:workers"] == 2, "and the new answers are written"
    assert list(document) == ["encryptionsalt", "config"], "where Pulumi writes it: before config"
    assert "# " in path.read_text(), "lab's comments are still there"
    ran = lab("config", "validate", "--stack", str(path), env={"LAB_PROJECT_DIR": str(project)})
    assert ran.code == 0, ran.err


def test_a_stack_file_without_pulumi_keys_is_written_as_rendered(project, lab):
    path = project / "Pulumi.dev.yaml"
    path.write_text(REWRITTEN.replace(f"encryptionsalt: {SALT}\n", ""))
    ran = lab("init", *INIT_FLAGS, "--force", env={"LAB_PROJECT_DIR": str(project)})
    assert ran.code == 0, ran.err
    text = path.read_text()
    assert "encryptionsalt" not in text and text.startswith("# The dev stack, written by `lab init`.")
