"""toolkit.gcp.revive.Reviver over real HTTP against the stand-in of GCP's REST APIs (tests/gcp/fake_gcp_api.py): a
preempted worker is started again, a stockout is retried with backoff and shown as one line, a VM already running or
still stopping is not an error, and each poll makes at most one API call. The error texts are GCP's own
(tests/data/gcp_errors, sources in SOURCES.md there). Time is a clock the test moves, so backoffs need no sleeping."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.gcp import revive

DATA = Path(__file__).resolve().parents[1] / "data" / "gcp_errors"
PROJECT = "my-gcp-project"
ZONE = "us-central1-a"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stockout() -> dict[str, str]:
    """A start's operation error when the zone has no capacity: code and message as GCE writes them into an Operation
    (stockout-operation.txt; restarts of stopped VMs hit it too: opentelemetry-operations-collector#607)."""
    code, message = (DATA / "stockout-operation.txt").read_text().strip().split(": ", 1)
    return {"code": code, "message": message}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fake_gcp(fake_gcp):
    """The Reviver runs on the test's clock here, not on GCP's, so a VM starts as soon as its operation is read
    (start_s 0). The start's real duration against the Reviver is tests/gcp/test_week.py's (a 40 s start)."""
    add = fake_gcp.add
    fake_gcp.add = lambda name, zone=ZONE, **kwargs: add(name, zone, **{"start_s": 0.0, **kwargs})
    return fake_gcp


def reviver(clock: Clock, *names: str) -> revive.Reviver:
    workers = [revive.Worker(f"worker-{i + 1}", name, ZONE) for i, name in enumerate(names)]
    return revive.Reviver(PROJECT, workers, what="A100", clock=clock)


def calls(fake_gcp) -> int:
    return len(fake_gcp.requests)


def test_a_preempted_worker_is_started_and_reported_running(fake_gcp, clock):
    fake_gcp.add("lab-dev-worker-0", status="TERMINATED", external_ip=None, internal_ip="10.42.0.11")
    fake_gcp.operation_reads = 1  # GCP takes a moment: the first read of the operation says RUNNING
    r = reviver(clock, "lab-dev-worker-0")
    assert r.status("worker-1") == "worker-1: not checked yet"
    lines = []
    for _ in range(8):
        before = calls(fake_gcp)
        lines.append(r.poll("worker-1"))
        assert calls(fake_gcp) - before <= 1, "one API call per poll at most"
        clock.now += 5
    assert lines[0] == "worker-1: stopped (preempted, or powered off when idle): starting it"
    assert any(line.startswith("worker-1: starting (asked GCP ") for line in lines), lines
    assert lines[-1] == "worker-1: running" and r.running("worker-1")
    assert fake_gcp.instances["lab-dev-worker-0"].status == "RUNNING"
    instance = r.instance("worker-1")
    assert instance is not None and instance.internal_ip == "10.42.0.11", "the tracker reaches it by its internal IP"
    starts = [path for method, path in fake_gcp.requests if method == "POST" and path.endswith("/start")]
    assert starts == [f"/compute/v1/projects/{PROJECT}/zones/{ZONE}/instances/lab-dev-worker-0/start"]
    assert any("/operations/operation-1-start" in path for method, path in fake_gcp.requests if method == "GET")


def test_polls_before_the_worker_is_due_ask_nothing(fake_gcp, clock):
    fake_gcp.add("lab-dev-worker-0")
    r = reviver(clock, "lab-dev-worker-0")
    assert r.poll("worker-1") == "worker-1: running"
    asked = calls(fake_gcp)
    for _ in range(50):
        r.poll("worker-1")
    assert calls(fake_gcp) == asked, "a running worker is read again only after a while"
    clock.now += revive.CHECK_RUNNING_S
    r.poll("worker-1")
    assert calls(fake_gcp) == asked + 1


def test_a_stockout_is_retried_with_backoff_and_shown_in_one_line(fake_gcp, clock):
    vm = fake_gcp.add("lab-dev-worker-0", status="TERMINATED", start_error=stockout())
    r = reviver(clock, "lab-dev-worker-0")
    r.poll("worker-1")  # reads TERMINATED
    r.poll("worker-1")  # asks for the start
    clock.now += revive.CHECK_OPERATION_S
    assert r.poll("worker-1") == "worker-1: no A100 capacity in us-central1-a, retrying in 30 s"
    clock.now += 10
    assert r.status("worker-1") == "worker-1: no A100 capacity in us-central1-a, retrying in 20 s"
    asked = calls(fake_gcp)
    assert r.poll("worker-1").endswith("retrying in 20 s") and calls(fake_gcp) == asked, "nothing asked before due"

    waits = []
    for _ in range(6):  # each retry finds no capacity again: the wait doubles up to the 10-minute cap
        vm.start_error = stockout()
        clock.now = r._states["worker-1"].due  # the next due time
        line = ""
        while "retrying" not in line:
            line = r.poll("worker-1")
            clock.now += revive.CHECK_OPERATION_S
        clock.now -= revive.CHECK_OPERATION_S
        waits.append(int(line.rsplit("retrying in ", 1)[1].split()[0]))
    assert waits == [60, 120, 240, 480, 600, 600]
    assert vm.status == "TERMINATED"

    clock.now = r._states["worker-1"].due  # capacity is back: the next try starts it
    for _ in range(4):
        line = r.poll("worker-1")
        clock.now += 5
    assert line == "worker-1: running" and vm.status == "RUNNING"
    assert r._states["worker-1"].backoff == 0, "a running worker starts its backoff afresh"


def test_a_stockout_with_details_names_its_own_zone(fake_gcp, clock):
    # ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS as GCE words it (stockout-resource-type.txt)
    text = (DATA / "stockout-resource-type.txt").read_text().strip()
    code, message = text.split("UNAVAILABLE ", 1)[1].split(": ", 1)
    fake_gcp.add(
        "lab-dev-worker-0", zone="us-east1-c", status="TERMINATED", start_error={"code": code, "message": message}
    )
    r = revive.Reviver(PROJECT, [revive.Worker("worker-1", "lab-dev-worker-0", "us-east1-c")], what="L4", clock=clock)
    for _ in range(3):
        line = r.poll("worker-1")
        clock.now += revive.CHECK_OPERATION_S
    assert line == "worker-1: no L4 capacity in us-east1-c, retrying in 30 s"


def test_a_running_worker_is_not_started_and_a_start_that_races_a_running_one_is_no_error(fake_gcp, clock):
    fake_gcp.add("lab-dev-worker-0")
    r = reviver(clock, "lab-dev-worker-0")
    assert r.poll("worker-1") == "worker-1: running"
    assert not [p for m, p in fake_gcp.requests if m == "POST"]
    # Seen stopped, then started by someone else (`lab up`) before the Reviver's start: GCP's start of a running VM
    # finishes without an error (instances.start is a no-op then), so it is not reported as a failure.
    fake_gcp.instances["lab-dev-worker-0"].status = "TERMINATED"
    clock.now += revive.CHECK_RUNNING_S
    r.poll("worker-1")
    fake_gcp.instances["lab-dev-worker-0"].status = "RUNNING"
    lines = []
    for _ in range(3):
        lines.append(r.poll("worker-1"))
        clock.now += revive.CHECK_OPERATION_S
    assert "retrying" not in " ".join(lines) and lines[-1] == "worker-1: running", lines


def test_a_worker_still_stopping_is_waited_for(fake_gcp, clock):
    # resourceNotReady: GCE's answer to a start while the VM is still stopping (resource-not-ready.txt)
    fake_gcp.add("lab-dev-worker-0", status="TERMINATED")
    r = reviver(clock, "lab-dev-worker-0")
    r.poll("worker-1")
    fake_gcp.instances["lab-dev-worker-0"].status = "STOPPING"  # it went STOPPING again between the read and the start
    fake_gcp.stopping_polls = 0
    assert r.poll("worker-1") == "worker-1: still stopping: it is started again once stopped"
    assert "retrying" not in r.status("worker-1")
    assert any(m == "POST" and p.endswith("/start") for m, p in fake_gcp.requests)
    clock.now += revive.CHECK_TRANSITION_S
    assert r.poll("worker-1").startswith("worker-1: stopped")  # the read finds it TERMINATED now
    for _ in range(3):
        line = r.poll("worker-1")
        clock.now += revive.CHECK_OPERATION_S
    assert line == "worker-1: running"


def test_gcp_refusing_or_not_answering_is_a_line_not_an_exception(fake_gcp, clock, monkeypatch):
    fake_gcp.add("lab-dev-worker-0", status="TERMINATED")
    body = {
        "error": {
            "code": 403,
            "message": "Required 'compute.instances.get' permission for "
            "'projects/my-gcp-project/zones/us-central1-a/instances/lab-dev-worker-0'",
            "errors": [
                {"message": "Required 'compute.instances.get' permission", "domain": "global", "reason": "forbidden"}
            ],
        }
    }
    fake_gcp.fail["/instances/lab-dev-worker-0"] = (403, body)
    r = reviver(clock, "lab-dev-worker-0")
    line = r.poll("worker-1")
    assert line.startswith("worker-1: cannot ask GCP about lab-dev-worker-0 (") and line.endswith("retrying in 30 s")
    assert "compute.instances.get" in line and "\n" not in line
    monkeypatch.setenv("LAB_COMPUTE_API", "http://127.0.0.1:9/compute/v1")  # nothing listens
    clock.now += 30
    line = r.poll("worker-1")
    assert "GCP did not answer" in line and line.endswith("retrying in 60 s")


def test_a_missing_vm_and_an_unknown_worker(fake_gcp, clock):
    r = reviver(clock, "lab-dev-worker-0")
    assert r.poll("worker-1") == "worker-1: no VM lab-dev-worker-0 in us-central1-a (`lab up` creates it)"
    assert not r.running("worker-1")
    with pytest.raises(Exception, match="no worker 'worker-9'"):
        r.poll("worker-9")


def test_each_worker_has_its_own_backoff(fake_gcp, clock):
    fake_gcp.add("lab-dev-worker-0", status="TERMINATED", start_error=stockout())
    fake_gcp.add("lab-dev-worker-1", status="TERMINATED")
    r = reviver(clock, "lab-dev-worker-0", "lab-dev-worker-1")
    for _ in range(5):
        r.poll("worker-1")
        r.poll("worker-2")
        clock.now += 5
    assert r.status("worker-1").startswith("worker-1: no A100 capacity in us-central1-a, retrying in ")
    assert r.status("worker-2") == "worker-2: running"
    assert set(r.statuses()) == {"worker-1", "worker-2"}
