"""`lab config show` and `lab config validate`, run as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BROKEN = ROOT / "tests" / "data" / "Pulumi.broken.yaml"


def write_stack(folder: Path, text: str, name: str = "t") -> Path:
    path = folder / f"Pulumi.{name}.yaml"
    path.write_text(text)
    return path


def test_shipped_dev_stack_is_valid_for_this_machine_and_for_gcp(lab):
    """As shipped, the dev stack is the lab on this machine (what a newcomer runs first); its GCP settings
    are valid too, for `--target gcp`."""
    ran = lab("config", "validate")
    assert ran.code == 0, ran.err
    assert "Pulumi.dev.yaml is valid (target local)" in ran.out
    assert ran.err == ""
    ran = lab("config", "validate", "--target", "gcp")
    assert ran.code == 0, ran.err
    assert "1 spot worker a2-highgpu-1g" in ran.out


def test_five_mistakes_are_all_named(lab):
    ran = lab("config", "validate", "--stack", str(BROKEN))
    assert ran.code == 1
    lines = ran.err.strip().splitlines()
    assert lines[-1] == f"error: 5 problems in {BROKEN}; fix them and run `lab config validate` again"
    problems = "\n".join(lines[:-1])
    assert "lab:workerz: unknown key; did you mean lab:workers?" in problems
    assert "lab:spot: expected true or false, got 'maybe'" in problems
    assert "gcp:zone: zone europe-west4-a is not in region us-central1" in problems
    assert "lab:workerMachineType: n1-standard-8 needs lab:workerGpu" in problems
    assert "lab:allowedSshCidrs: 0.0.0.0/0 opens SSH to the whole internet" in problems
    assert len(lines) == 6
    assert "Traceback" not in ran.err


def test_missing_required_keys_are_named(lab, tmp_path):
    path = write_stack(tmp_path, "config:\n  lab:target: gcp\n  lab:workers: 2\n")
    ran = lab("config", "validate", "--stack", str(path))
    assert ran.code == 1
    for key in ("gcp:project", "gcp:region", "gcp:zone", "lab:allowedSshCidrs"):
        assert f"{key}: required for the gcp target" in ran.err


def test_other_targets_do_not_need_gcp_keys(lab, tmp_path):
    path = write_stack(tmp_path, "config:\n  lab:target: local\n")
    ran = lab("config", "validate", "--stack", str(path))
    assert ran.code == 0, ran.err
    assert "is valid (target local)" in ran.out
    # --target overrides the stack's lab:target, and then the gcp keys are required.
    ran = lab("config", "validate", "--stack", str(path), "--target", "gcp")
    assert ran.code == 1
    assert "gcp:project: required for the gcp target" in ran.err


def test_show_fills_in_defaults_and_derived_values(lab):
    ran = lab("config", "show", "--json")
    assert ran.code == 0, ran.err
    shown = json.loads(ran.out)
    assert shown["stack"] == "dev"
    config, sources = shown["config"], shown["sources"]
    assert config["lab:workers"] == 1 and sources["lab:workers"] == "stack"
    assert config["lab:workerDiskGb"] == 150 and sources["lab:workerDiskGb"] == "default"
    assert config["lab:trackerMachineType"] == "e2-standard-2"
    assert config["lab:idleMinutes"] == 30
    assert config["lab:bucketName"] == "my-gcp-project-lab-dev" and sources["lab:bucketName"] == "derived"
    assert config["lab:bucketLocation"] == "US-CENTRAL1"
    assert config["lab:zones"] == ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"]
    assert config["lab:workerGpu"] is None
    assert shown["problems"] == []


def test_show_table(lab):
    ran = lab("config", "show")
    assert ran.code == 0, ran.err
    for text in ("lab:workerMachineType", "a2-highgpu-1g", "derived", "my-gcp-project-lab-dev"):
        assert text in ran.out


def test_show_derives_zones_from_the_zone(lab, tmp_path):
    path = write_stack(
        tmp_path,
        "config:\n  gcp:project: p-123456\n  gcp:region: europe-west4\n"
        "  gcp:zone: europe-west4-b\n  lab:allowedSshCidrs: [198.51.100.7/32]\n",
    )
    shown = json.loads(lab("config", "show", "--json", "--stack", str(path)).out)
    assert shown["config"]["lab:zones"] == ["europe-west4-b"]
    assert shown["sources"]["lab:zones"] == "derived"
    assert shown["config"]["lab:bucketName"] == "p-123456-lab-t"


def test_show_on_a_broken_stack_shows_what_it_can_and_fails(lab):
    ran = lab("config", "show", "--stack", str(BROKEN))
    assert ran.code == 1
    assert "maybe" in ran.out  # the bad value is shown where it is
    assert ran.err.strip() == (
        f"error: Pulumi.broken.yaml has 5 problems; `lab config validate --stack {BROKEN}` lists them"
    )


def test_stack_by_name_from_the_project_folder(lab, tmp_path):
    (tmp_path / "Pulumi.yaml").write_text("name: lab\nruntime: python\n")
    write_stack(tmp_path, "config:\n  lab:target: ssh\n  lab:trackerHost: gpu-box.example.edu\n", name="uni")
    ran = lab("config", "validate", "--stack", "uni", cwd=tmp_path)
    assert ran.code == 0, ran.err
    assert str(tmp_path / "Pulumi.uni.yaml") in ran.out
    ran = lab("config", "validate", env={"LAB_STACK": "uni"}, cwd=tmp_path)
    assert ran.code == 0, ran.err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("config:\n  lab:workers: [1\n", r"is not valid YAML at line \d"),
        ("- just\n- a list\n", "must be a mapping with a `config:` section"),
        ("config: 3\n", "`config:` must be a mapping"),
    ],
)
def test_unreadable_stack_files(lab, tmp_path, text, message):
    import re

    ran = lab("config", "validate", "--stack", str(write_stack(tmp_path, text)))
    assert ran.code == 1
    assert re.search(message, ran.err), ran.err
    assert len(ran.err.strip().splitlines()) == 1


def test_missing_stack_file(lab, tmp_path):
    ran = lab("config", "show", "--stack", "nosuch")
    assert ran.code == 1
    assert ran.err.startswith("error: no stack file ")
    assert "Pulumi.nosuch.yaml" in ran.err


def test_a_wide_ssh_range_is_valid_with_a_warning_and_two_halves_of_the_internet_are_not(lab, tmp_path):
    base = (
        "config:\n  gcp:project: my-gcp-project\n  gcp:region: us-central1\n  gcp:zone: us-central1-a\n"
        "  lab:allowedSshCidrs: {}\n"
    )
    ran = lab("config", "validate", "--stack", str(write_stack(tmp_path, base.format('["100.64.0.0/16"]'))))
    assert ran.code == 0, ran.err
    assert "warning: lab:allowedSshCidrs: 100.64.0.0/16 lets 65,536 addresses try SSH" in ran.err
    ran = lab("config", "validate", "--stack", str(write_stack(tmp_path, base.format('["0.0.0.0/1", "128.0.0.0/1"]'))))
    assert ran.code == 1
    assert "lab:allowedSshCidrs: 0.0.0.0/1 opens SSH to 2,147,483,648 addresses" in ran.err
