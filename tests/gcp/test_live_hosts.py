"""The gcp lab's hosts are the VMs as they are now, not as the last `lab up` left them: a preempted or
idle-stopped worker (TERMINATED, its ephemeral address released) is shown as stopped and left out of slots and
tunnels; a restarted VM is reached at its new address; without GCP, the last outputs are used and that is said
once. GCP is the stand-in of tests/gcp/fake_gcp_api.py over real HTTP (instances.aggregatedList filtered on
labels.lab); the Pulumi state is a diy-backend checkpoint; SSH and `lab status` are real."""

from __future__ import annotations

import json

import pytest

from tests.gcp.gcp_vms import LABELS, OUTPUTS
from tests.gcp.pulumi_fakes import gcp_settings
from toolkit.hosts import ssh as remote
from toolkit.labs import ssh as remote_lab


def vms(fake, *, tracker_ip="198.51.100.10", worker0="RUNNING", worker1="RUNNING"):
    fake.add("lab-dev-tracker", "us-central1-a", external_ip=tracker_ip, labels=LABELS)
    fake.add("lab-dev-worker-0", "us-central1-b", status=worker0, external_ip="198.51.100.11", labels=LABELS)
    fake.add("lab-dev-worker-1", "us-central1-b", status=worker1, external_ip="198.51.100.12", labels=LABELS)


def test_a_preempted_worker_is_stopped_and_left_out(lab_state, fake_gcp):
    vms(fake_gcp, tracker_ip="203.0.113.50", worker0="TERMINATED")
    said: list[str] = []
    view = remote_lab.gcp_hosts(gcp_settings(), said.append)
    assert view.live
    assert [(h.name, h.address) for h in view.hosts] == [("tracker", "203.0.113.50"), ("worker-2", "198.51.100.12")]
    stopped = [s for s in view.states if not s.usable]
    assert [(s.host.name, s.instance, s.status) for s in stopped] == [("worker-1", "lab-dev-worker-0", "TERMINATED")]
    assert any("worker-1 (lab-dev-worker-0) is stopped" in line and "left out" in line for line in said), said
    asked = [p for m, p in fake_gcp.requests if "aggregated/instances" in p]
    assert len(asked) == 1 and "labels.lab%3Ddev" in asked[0], "one aggregated list, filtered on the lab's label"


def test_the_lab_uses_the_current_addresses(lab_state, fake_gcp):
    vms(fake_gcp, tracker_ip="203.0.113.50", worker1="STAGING")
    lab = remote_lab.open_lab("dev", "gcp", say=lambda line: None)
    assert lab.tracker.address == "203.0.113.50"
    assert [w.name for w in lab.workers] == ["worker-1"], "a worker still starting gets no slot yet"
    assert [s.host.name for s in lab.stopped] == ["worker-2"]
    assert lab.access.strict


def test_a_stopped_tracker_is_an_error_that_says_so(lab_state, fake_gcp):
    fake_gcp.add("lab-dev-tracker", "us-central1-a", status="TERMINATED", labels=LABELS)
    with pytest.raises(remote_lab.LabError) as caught:
        remote_lab.open_lab("dev", "gcp", say=lambda line: None)
    assert "the tracker (lab-dev-tracker) of stack dev is stopped" in caught.value.one_line()
    assert "`lab up` starts it" in caught.value.one_line()


def test_without_gcp_the_last_outputs_are_used_and_said_once(lab_state, monkeypatch):
    monkeypatch.setenv("LAB_COMPUTE_API", "http://127.0.0.1:9/compute/v1")  # nothing answers there
    said: list[str] = []
    for _ in range(2):
        view = remote_lab.gcp_hosts(gcp_settings(), said.append)
        assert not view.live
        assert [h.address for h in view.hosts] == ["198.51.100.10", "198.51.100.11", "198.51.100.12"]
    assert len(said) == 1 and "using the addresses of the last `lab up`" in said[0]


def test_lab_status_shows_a_stopped_worker_as_stopped(lab, lab_state, fake_gcp):
    # The tracker at 127.0.0.1: nothing listens on port 22 here, so SSH is refused at once (a real ssh).
    vms(fake_gcp, tracker_ip="127.0.0.1", worker0="TERMINATED")
    ran = lab("status", "--target", "gcp", "--json", env=fake_gcp.env())
    assert ran.code == 0, ran.err
    document = json.loads(ran.out)
    hosts = document["hosts"]
    assert list(hosts) == ["tracker", "worker-1", "worker-2"]
    assert hosts["worker-1"]["state"] == "stopped" and hosts["worker-1"]["status"] == "TERMINATED"
    assert hosts["worker-1"]["address"] is None
    assert "preempted, or powered off when idle" in hosts["worker-1"]["error"]
    assert hosts["tracker"]["state"] == "unreachable" and hosts["tracker"]["address"] == "127.0.0.1"
    assert document["addresses"] == "compute api"
    table = lab("status", "--target", "gcp", env=fake_gcp.env())
    assert table.code == 0, table.err
    row = next(line for line in table.out.splitlines() if "worker-1" in line)
    assert "stopped" in row and "unreachable" not in row
    assert "worker-1 (lab-dev-worker-0) is stopped" in table.err


def test_lab_ssh_to_a_stopped_worker_says_it_is_stopped(lab, lab_state, fake_gcp):
    vms(fake_gcp, worker0="TERMINATED")
    ran = lab("ssh", "--target", "gcp", "worker-1", "--", "true", env=fake_gcp.env())
    assert ran.code == 1
    assert "error: worker-1 (lab-dev-worker-0) is stopped" in ran.err and "`lab up` starts it" in ran.err


def test_hosts_from_outputs_still_reads_the_last_up():
    hosts = remote_lab.hosts_from_outputs(OUTPUTS, "dev")
    assert [h.name for h in hosts] == ["tracker", "worker-1", "worker-2"]
    assert all(isinstance(h, remote.Host) for h in hosts)
