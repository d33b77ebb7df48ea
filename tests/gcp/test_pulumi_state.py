"""The Pulumi state read without the CLI, from files laid out as the diy backend lays them out (the sources are
named in tests/gcp/pulumi_fakes.py): where locks and checkpoints are, compressed checkpoints, and what a
checkpoint's entries mean for `lab down` (a replaced resource still exists; an interrupted create may have
left a VM that no resource names)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.gcp.pulumi_fakes import FakeCli, path_without_pulumi, write_checkpoint, write_lock
from toolkit.errors import EXIT_LOCKED, LabError
from toolkit.gcp import pulumi_state

INSTANCE = "gcp:compute/instance:Instance"
DISK = "gcp:compute/disk:Disk"


@pytest.fixture
def backend(isolated: Path) -> Path:
    return isolated / ".lab" / "pulumi"


@pytest.fixture
def url(backend: Path) -> str:
    return f"file://{backend}"


def names(state: pulumi_state.State | None) -> list[str]:
    assert state is not None
    return sorted(r.name for r in state.cloud_resources)


# -- locks ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["project-layout", "legacy-layout"])
def test_a_lock_is_seen_where_the_diy_backend_writes_it(backend, url, legacy):
    written = write_lock(backend, "dev", who="ci", host="runner-7", pid=4242, legacy=legacy)
    expected = "organization/lab/dev" if not legacy else "dev"
    assert written.parent == backend / ".pulumi" / "locks" / expected
    (held,) = pulumi_state.locks(url, "dev")
    assert held.path == f".pulumi/locks/{expected}/{written.name}"
    assert held.who == "ci@runner-7 (pid 4242)"
    assert held.since.startswith("2026-11-22T03:00:00")
    assert pulumi_state.locks(url, "prod") == [], "another stack's lock is not this stack's"


def test_a_lock_stops_down_before_anything_runs_even_without_a_cli(lab, backend):
    write_checkpoint(backend, "dev", {"tracker_external_ip": "198.51.100.10"}, [(INSTANCE, "tracker")])
    write_lock(backend, "dev")
    ran = lab("down", "--target", "gcp", "--yes", env={"PATH": path_without_pulumi()})
    assert ran.code == EXIT_LOCKED, ran.err
    assert "ci@runner-7 (pid 4242)" in ran.err and ".pulumi/locks/organization/lab/dev/" in ran.err
    assert "Pulumi CLI" not in ran.err and "backup" not in ran.err.lower()


@pytest.mark.parametrize("command", [("down", "--target", "gcp", "--yes"), ("up", "--target", "gcp", "--yes")])
def test_a_lock_stops_up_and_down_before_the_cli_runs(lab, backend, isolated, command):
    """With a Pulumi CLI at hand, nothing of it runs either (not even `pulumi version`)."""
    cli = FakeCli(isolated / ".lab")
    write_checkpoint(backend, "dev", {"tracker_external_ip": "198.51.100.10"}, [(INSTANCE, "tracker")])
    write_lock(backend, "dev")
    ran = lab(*command, env={"PATH": path_without_pulumi(), "PULUMI_CONFIG_PASSPHRASE": "x"})
    assert ran.code == EXIT_LOCKED, ran.err
    assert "locked" in ran.err and "ci@runner-7 (pid 4242)" in ran.err
    assert cli.calls() == []


# -- where the checkpoint is ---------------------------------------------------------------------------------


def test_a_project_layout_checkpoint_is_read(backend, url):
    path = write_checkpoint(backend, "dev", {"bucket_name": "b"}, [(INSTANCE, "tracker")])
    assert path == backend / ".pulumi" / "stacks" / "lab" / "dev.json"
    assert (backend / ".pulumi" / "meta.yaml").read_text() == "version: 1\n"
    state = pulumi_state.read(url, "dev")
    assert names(state) == ["tracker"] and state.outputs == {"bucket_name": "b"}
    assert pulumi_state.read(url, "prod") is None


def test_a_legacy_layout_checkpoint_is_read(backend, url):
    path = write_checkpoint(backend, "dev", {}, [(INSTANCE, "tracker")], legacy=True)
    assert path == backend / ".pulumi" / "stacks" / "dev.json"
    assert names(pulumi_state.read(url, "dev")) == ["tracker"]


def test_meta_yaml_decides_the_layout(backend, url):
    write_checkpoint(backend, "dev", {}, [(INSTANCE, "legacy-tracker")], legacy=True)
    write_checkpoint(backend, "dev", {}, [(INSTANCE, "tracker")])  # writes meta.yaml version 1
    assert names(pulumi_state.read(url, "dev")) == ["tracker"], "version 1: the project layout, as Pulumi reads it"
    (backend / ".pulumi" / "meta.yaml").write_text("version: 0\n")
    assert names(pulumi_state.read(url, "dev")) == ["legacy-tracker"]


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_compressed_checkpoints_are_read(backend, url, compression):
    path = write_checkpoint(backend, "dev", {"bucket_name": "b"}, [(INSTANCE, "worker-0")], compression=compression)
    assert path.name == {"gzip": "dev.json.gz", "zstd": "dev.json.zst"}[compression]
    state = pulumi_state.read(url, "dev")
    assert names(state) == ["worker-0"] and state.outputs == {"bucket_name": "b"}


def test_of_several_checkpoint_files_the_newest_is_the_stack(backend, url):
    plain = write_checkpoint(backend, "dev", {}, [])
    zst = write_checkpoint(backend, "dev", {}, [(INSTANCE, "worker-0")], compression="zstd")
    os.utime(plain, (1_700_000_000, 1_700_000_000))
    os.utime(zst, (1_800_000_000, 1_800_000_000))
    assert names(pulumi_state.read(url, "dev")) == ["worker-0"]
    os.utime(plain, (1_900_000_000, 1_900_000_000))
    assert names(pulumi_state.read(url, "dev")) == []


def test_a_damaged_checkpoint_is_a_one_line_error(backend, url):
    path = write_checkpoint(backend, "dev", {}, [], compression="zstd")
    path.write_bytes(path.read_bytes()[:12])
    with pytest.raises(LabError) as caught:
        pulumi_state.read(url, "dev")
    assert "dev.json.zst" in caught.value.one_line() and "\n" not in caught.value.one_line()


# -- what the entries mean -----------------------------------------------------------------------------------


def test_a_replaced_resource_still_exists_until_the_next_update_deletes_it(backend, url):
    write_checkpoint(backend, "dev", {}, [(INSTANCE, "worker-0")], deleted=[(INSTANCE, "worker-0")])
    state = pulumi_state.read(url, "dev")
    assert [(r.name, r.delete) for r in state.cloud_resources] == [("worker-0", True), ("worker-0", False)]
    assert "replaced, still to be deleted" in state.cloud_resources[0].describe()


def test_an_interrupted_create_may_have_left_a_vm(backend, url):
    write_checkpoint(backend, "dev", {}, [(DISK, "tracker-data")], pending=[("creating", INSTANCE, "worker-0")])
    state = pulumi_state.read(url, "dev")
    assert names(state) == ["tracker-data", "worker-0"]
    (pending,) = [r for r in state.cloud_resources if r.pending]
    assert pending.describe() == "Instance worker-0 (interrupted while creating)"


def test_components_providers_reads_and_deleted_replacements_are_not_cloud_resources(backend, url):
    path = write_checkpoint(backend, "dev", {}, [("lab:infra:WorkerPool", "worker"), (INSTANCE, "tracker")])
    text = path.read_text()
    # a resource read with .get (external) and one a delete-before-replace already deleted
    text = text.replace(
        '"resources": [',
        '"resources": [{"urn": "urn:pulumi:dev::lab::gcp:compute/network:Network::default", "custom": true, '
        '"external": true, "type": "gcp:compute/network:Network"}, '
        '{"urn": "urn:pulumi:dev::lab::gcp:compute/instance:Instance::worker-1", "custom": true, '
        '"pendingReplacement": true, "type": "gcp:compute/instance:Instance"}, ',
    )
    path.write_text(text)
    assert names(pulumi_state.read(url, "dev")) == ["tracker"]


@pytest.mark.parametrize(
    "state",
    [
        {"deleted": [(INSTANCE, "worker-0")]},
        {"pending": [("creating", INSTANCE, "worker-0")]},
        {"compression": "zstd", "resources": [(INSTANCE, "worker-0")]},
    ],
    ids=["replaced-not-deleted", "interrupted-create", "zstd-checkpoint"],
)
def test_down_does_not_say_nothing_to_do_while_a_vm_may_run(lab, backend, state):
    """With nothing else in the state, `lab down` without a CLI must fail for want of one, not exit 0."""
    resources = state.pop("resources", [])
    write_checkpoint(backend, "dev", {}, resources, **state)
    ran = lab("down", "--target", "gcp", "--yes", env={"PATH": path_without_pulumi()})
    assert "nothing to do" not in ran.out
    assert ran.code == 1 and "Pulumi CLI" in ran.err, ran.err
