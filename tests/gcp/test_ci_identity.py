"""The CI runner's custom roles (toolkit.gcp.ci_identity) against what a scheduled no-SSH `lab down` asks of GCP:
the destroy of the lab's stack as pulumi-gcp's Deletes call GCP (tests/gcp/teardown_calls.py, from the provider's
source), and lab's own calls (the tracker's stop and wait, the leftover lists) through the Compute stand-in with only
the role's permissions (tests/gcp/fake_gcp_api.py). The role must grant every permission they need, and nothing
neither needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gcp.pulumi_fakes import gcp_settings
from tests.gcp.teardown_calls import destroy_calls
from toolkit.gcp import ci_identity

ROOT = Path(__file__).resolve().parents[2]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGxhYnRlc3RrZXlsYWJ0ZXN0a2V5bGFidGVzdGtleQ lab@test\n"


@pytest.fixture(scope="module")
def destroyed(tmp_path_factory: pytest.TempPathFactory) -> list:
    """The calls of destroying the lab's stack of the shipped dev stack file (a worker, so the tracker's worker
    control role and its conditioned project binding too)."""
    from tests.infra.program import run_program
    from toolkit.config import stack

    key = tmp_path_factory.mktemp("key") / "id_ed25519.pub"
    key.write_text(KEY)
    raw = dict(stack.read(str(ROOT / "Pulumi.dev.yaml")).raw)
    raw["lab:sshPublicKeyPath"] = str(key)
    run = run_program(raw)
    assert run.of_type("gcp:projects/iAMCustomRole:IAMCustomRole"), "the dev stack has workers"
    return destroy_calls(run)


def test_the_runner_may_make_every_call_of_destroying_the_lab(destroyed):
    """pulumi-gcp's disk Delete reads the disk first (disks.get, for its users): without compute.disks.get the
    tracker's data disk stayed, and `lab down` failed with a 403, after the tracker was gone."""
    project = {c.permission for c in destroyed if c.on == "project"}
    bucket = {c.permission for c in destroyed if c.on == "bucket"}
    assert project - set(ci_identity.PROJECT_PERMISSIONS) == set()
    assert bucket == set(ci_identity.BUCKET_POLICY_PERMISSIONS)


def test_the_tracker_goes_before_its_data_disk_so_nothing_is_detached(destroyed):
    """The tracker depends on its data disk, so the engine deletes the VM first and the disk has no users left:
    the provider's detach path (instances.get, instances.detachDisk) is never taken."""
    methods = [c.method for c in destroyed]
    assert "instances.detachDisk" not in methods and "instances.get" not in methods
    assert methods.index("disks.get") > max(i for i, m in enumerate(methods) if m == "instances.delete")


def test_the_teardown_role_holds_nothing_a_no_ssh_down_does_not_use(destroyed, fake_gcp):
    """lab's own calls with only the role's permissions: the tracker stopped and waited for (instances.stop,
    zoneOperations.wait), what is still labelled with the stack listed (aggregatedList of instances and disks).
    With those and the destroy's, every permission of the role is used: none is granted for nothing."""
    from toolkit.labs import gcp as gcp_lab

    settings = gcp_settings()
    fake_gcp.granted = frozenset(ci_identity.PROJECT_PERMISSIONS)
    fake_gcp.add("lab-dev-tracker", labels={"lab": "dev"})
    outputs = {"tracker_name": "lab-dev-tracker", "zone": "us-central1-a"}
    gcp_lab.stop_tracker_vm(settings, outputs, say=lambda line: None)
    check = gcp_lab.labelled_leftovers(settings, lambda line: None)
    assert check.checked, check.why
    assert fake_gcp.instances["lab-dev-tracker"].status == "TERMINATED"
    used = fake_gcp.used | {c.permission for c in destroyed if c.on == "project"}
    assert set(ci_identity.PROJECT_PERMISSIONS) - used == set()
