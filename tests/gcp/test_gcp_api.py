"""toolkit.gcp.api over real HTTP against the stand-in of GCP's REST APIs (tests/gcp/fake_gcp_api.py, whose
routes cite the reference pages they follow): pagination, partial success, GCP's JSON error bodies, operations
(start, stop, a stockout on restart), guest attributes, and the auth seam (no credentials for a loopback
stand-in, application-default credentials for everything else)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gcp.fake_gcp_api import SHUTDOWN_WINDOW_S, WAIT_DEADLINE_S, Step
from toolkit.errors import LabError
from toolkit.gcp import api as gcp_api
from toolkit.gcp import capacity

DATA = Path(__file__).resolve().parents[1] / "data" / "gcp_errors"


def test_aggregated_list_follows_every_page(fake_gcp):
    fake_gcp.page_size = 2
    for i in range(5):
        fake_gcp.add(f"lab-dev-worker-{i}", labels={"lab": "dev"})
    fake_gcp.add("someone-else", labels={"lab": "prod"})
    listing = gcp_api.labelled("my-gcp-project", "dev", ("instances",))
    assert sorted(i.name for i in listing.instances()) == [f"lab-dev-worker-{i}" for i in range(5)]
    pages = [path for method, path in fake_gcp.requests if "aggregated/instances" in path]
    assert len(pages) == 3 and "pageToken=4" in pages[-1]
    assert all("returnPartialSuccess=true" in p and "labels.lab%3Ddev" in p for p in pages)
    assert listing.unreachable == ()


def test_a_zone_that_does_not_answer_is_named_not_ignored(fake_gcp):
    fake_gcp.add("lab-dev-tracker", labels={"lab": "dev"})
    fake_gcp.unreachable_zones = ("us-east1-b",)
    listing = gcp_api.labelled("my-gcp-project", "dev", ("instances",))
    assert [i.name for i in listing.instances()] == ["lab-dev-tracker"]
    assert any("us-east1-b" in scope for scope in listing.unreachable)
    check = gcp_api.check_leftovers("my-gcp-project", "dev")
    assert not check.checked and "us-east1-b" in check.why
    assert list(check) == ["instance lab-dev-tracker in us-central1-a"]


def test_gcp_error_bodies_become_one_line_errors(fake_gcp):
    body = fake_gcp_error(403, "Required 'compute.instances.list' permission for 'projects/my-gcp-project'")
    fake_gcp.fail["aggregated/instances"] = (403, body)
    with pytest.raises(gcp_api.ApiError) as caught:
        gcp_api.labelled("my-gcp-project", "dev", ("instances",))
    error = caught.value
    assert error.http_code == 403 and error.reasons == ("forbidden",)
    assert "Required 'compute.instances.list' permission" in error.one_line()
    assert "\n" not in error.one_line()
    check = gcp_api.check_leftovers("my-gcp-project", "dev")
    assert not check.checked and "permission" in check.why


def test_a_body_that_is_not_gcps_is_still_one_line(fake_gcp):
    fake_gcp.fail["aggregated"] = (502, {"unexpected": True})
    with pytest.raises(gcp_api.ApiError) as caught:
        gcp_api.labelled("my-gcp-project", "dev")
    assert caught.value.http_code == 502


def test_the_stand_in_is_called_without_credentials_and_the_real_api_with_adc(fake_gcp, monkeypatch, tmp_path):
    gcp_api.get_instance("my-gcp-project", "us-central1-a", "nothing")  # 404 -> None, no credentials asked
    # Any other endpoint takes application-default credentials; there are none here, so GCP is not asked.
    monkeypatch.setenv("LAB_COMPUTE_API", "https://compute.googleapis.com/compute/v1")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    gcp_api._session.cache_clear()
    with pytest.raises(gcp_api.NotAsked) as caught:
        gcp_api.get_instance("my-gcp-project", "us-central1-a", "tracker")
    assert "no Google credentials" in caught.value.one_line()
    assert "gcloud auth application-default login" in caught.value.one_line()
    assert not gcp_api.is_local("https://127.0.0.1:8080") and not gcp_api.is_local("http://10.0.0.1")
    assert gcp_api.is_local("http://127.0.0.1:8080/compute/v1") and gcp_api.is_local("http://localhost:1")


def test_no_answer_at_all_is_not_asked(monkeypatch):
    monkeypatch.setenv("LAB_COMPUTE_API", "http://127.0.0.1:9/compute/v1")  # discard port: nothing listens
    with pytest.raises(gcp_api.NotAsked) as caught:
        gcp_api.get_instance("my-gcp-project", "us-central1-a", "tracker")
    assert "GCP did not answer" in caught.value.one_line()
    assert not gcp_api.check_leftovers("my-gcp-project", "dev").checked


def test_instance_status_and_addresses(fake_gcp):
    fake_gcp.add("lab-dev-tracker", external_ip="198.51.100.10", internal_ip="10.128.0.2")
    fake_gcp.add("lab-dev-worker-0", status="TERMINATED", external_ip="198.51.100.11")
    tracker = gcp_api.get_instance("my-gcp-project", "us-central1-a", "lab-dev-tracker")
    worker = gcp_api.get_instance("my-gcp-project", "us-central1-a", "lab-dev-worker-0")
    assert tracker is not None and tracker.status == "RUNNING" and tracker.external_ip == "198.51.100.10"
    assert tracker.internal_ip == "10.128.0.2" and tracker.zone == "us-central1-a" and tracker.id
    assert worker is not None and worker.status == "TERMINATED" and worker.external_ip is None
    assert gcp_api.get_instance("my-gcp-project", "us-central1-b", "lab-dev-tracker") is None


def test_host_keys_from_guest_attributes(fake_gcp):
    fake_gcp.add("lab-dev-tracker", host_keys={"ssh-ed25519": "AAAAC3NzaC1lZDI1NTE5AAAAIB"})
    fake_gcp.add("lab-dev-worker-0")
    assert gcp_api.host_keys("my-gcp-project", "us-central1-a", "lab-dev-tracker") == {
        "ssh-ed25519": "AAAAC3NzaC1lZDI1NTE5AAAAIB"
    }
    assert gcp_api.host_keys("my-gcp-project", "us-central1-a", "lab-dev-worker-0") == {}, "not published yet"
    assert (
        "GET",
        "/compute/v1/projects/my-gcp-project/zones/us-central1-a/instances/lab-dev-tracker/"
        "getGuestAttributes?queryPath=hostkeys%2F",
    ) in fake_gcp.requests


# -- start and stop -------------------------------------------------------------------------------------------


def test_start_stopped_starts_only_what_is_stopped(fake_gcp):
    fake_gcp.add("lab-dev-worker-0", status="TERMINATED", external_ip=None, next_ip="203.0.113.77")
    fake_gcp.add("lab-dev-worker-1", status="RUNNING")
    fake_gcp.add("lab-dev-worker-2", status="STOPPING")
    said: list[str] = []
    names = ["lab-dev-worker-0", "lab-dev-worker-1", "lab-dev-worker-2", "lab-dev-worker-9"]
    started = gcp_api.start_stopped("my-gcp-project", "us-central1-a", names, said.append)
    assert started == ["lab-dev-worker-0", "lab-dev-worker-2"], "running and missing VMs are left alone"
    assert fake_gcp.instances["lab-dev-worker-0"].status == "RUNNING"
    assert fake_gcp.instances["lab-dev-worker-0"].external_ip == "203.0.113.77", "a start brings a new address"
    posts = [path for method, path in fake_gcp.requests if method == "POST"]
    assert not any("lab-dev-worker-1/start" in p for p in posts)
    assert sum("/wait" in p for p in posts) == 2, "each start waits for its zone operation"


def test_a_stockout_on_restart_is_an_error_capacity_reads(fake_gcp):
    # The operation error of a start that found no capacity: code and message as GCE writes them into an
    # Operation (tests/data/gcp_errors/stockout-operation.txt; restarts hit it too:
    # GoogleCloudPlatform/opentelemetry-operations-collector#607).
    code, message = (DATA / "stockout-operation.txt").read_text().strip().split(": ", 1)
    fake_gcp.add("lab-dev-worker-0", status="TERMINATED", start_error={"code": code, "message": message})
    with pytest.raises(gcp_api.OperationFailed) as caught:
        gcp_api.start_stopped("my-gcp-project", "us-central1-a", ["lab-dev-worker-0"])
    assert caught.value.codes == ("ZONE_RESOURCE_POOL_EXHAUSTED",)
    found = capacity.classify(caught.value.one_line())
    assert isinstance(found, capacity.Stockout) and found.zone == "us-central1-a"
    assert fake_gcp.instances["lab-dev-worker-0"].status == "TERMINATED"


def test_stop_instance_waits_for_the_operation(fake_gcp):
    fake_gcp.add("lab-dev-worker-0")
    assert gcp_api.stop_instance("my-gcp-project", "us-central1-a", "lab-dev-worker-0") is True
    assert fake_gcp.instances["lab-dev-worker-0"].status == "TERMINATED"
    assert any(p.endswith("/wait") for m, p in fake_gcp.requests if m == "POST")
    assert gcp_api.stop_instance("my-gcp-project", "us-central1-a", "gone") is False


# -- operations take GCP's time (the stand-in's clock runs at fake_gcp.scale; the client scales alike) -----------


def test_the_stand_in_holds_a_wait_to_its_own_deadline_and_answers_running(fake_gcp):
    """zoneOperations.wait answers at its ~2-minute deadline with the operation still RUNNING; a client that asks
    again gets DONE when it is (https://cloud.google.com/compute/docs/reference/rest/v1/zoneOperations/wait)."""
    fake_gcp.add("lab-dev-worker-0", status="TERMINATED", start_s=150.0)  # a start that takes 2.5 minutes
    assert gcp_api.start_stopped("my-gcp-project", "us-central1-a", ["lab-dev-worker-0"]) == ["lab-dev-worker-0"]
    assert [status for _, status, _ in fake_gcp.waits] == ["RUNNING", "DONE"]
    held = fake_gcp.waits[0][2]
    assert WAIT_DEADLINE_S <= held < WAIT_DEADLINE_S + 15, f"held {held:.0f} s of GCP time"
    assert fake_gcp.instances["lab-dev-worker-0"].status == "RUNNING"


def test_a_stop_powers_the_vm_off_at_the_windows_end_whatever_the_guest_is_doing(fake_gcp):
    """From the stop request a standard VM's guest has 90 s, a spot VM's 30 s
    (https://cloud.google.com/compute/docs/shutdownscript, https://cloud.google.com/compute/docs/instances/spot)."""
    slow = [Step("sweep", 20.0), Step("final backup", 100.0)]
    fake_gcp.add("standard", shutdown=slow)
    fake_gcp.add("spot", spot=True, shutdown=[Step("checkpoint", 25.0), Step("upload", 10.0)])
    fake_gcp.add("quick", shutdown=[Step("everything", 40.0)])
    for name in ("standard", "spot", "quick"):
        assert gcp_api.stop_instance("my-gcp-project", "us-central1-a", name) is True
    standard, spot, quick = (fake_gcp.instances[n] for n in ("standard", "spot", "quick"))
    assert (standard.status, standard.cut, standard.shut_down) == ("TERMINATED", True, ["sweep"])
    assert standard.stopped_after_s == SHUTDOWN_WINDOW_S["standard"] == 90.0
    assert (spot.cut, spot.shut_down, spot.stopped_after_s) == (True, ["checkpoint"], SHUTDOWN_WINDOW_S["spot"])
    assert (quick.cut, quick.shut_down, quick.stopped_after_s) == (False, ["everything"], 40.0)


def test_a_stop_that_outlasts_the_clients_read_timeout_is_waited_for(fake_gcp):
    """Issue 24, breakage 2: the guest's shutdown (here 80 s, inside the 90-s window) keeps the stop RUNNING longer
    than the client's 30-s read timeout, and zoneOperations.wait holds the request that long. The wait's read timeout
    must outlast the wait's own deadline; a wait that is not answered is asked again until the overall deadline."""
    fake_gcp.add("lab-dev-tracker", shutdown=[Step("mlflow", 10.0), Step("final backup", 70.0)])
    assert gcp_api.stop_instance("my-gcp-project", "us-central1-a", "lab-dev-tracker") is True
    tracker = fake_gcp.instances["lab-dev-tracker"]
    assert (tracker.status, tracker.cut, tracker.shut_down) == ("TERMINATED", False, ["mlflow", "final backup"])
    assert gcp_api.WAIT_READ_TIMEOUT_S > WAIT_DEADLINE_S, "the read timeout outlasts the server's own deadline"


def test_a_wait_that_gcp_does_not_answer_is_asked_again(fake_gcp):
    """A wait whose connection drops without an answer (NoAnswer) is asked again until the overall deadline: the
    operation goes on at GCP regardless."""
    fake_gcp.add("lab-dev-worker-0", shutdown=[Step("guest", 20.0)])
    fake_gcp.drop_waits = 1
    assert gcp_api.stop_instance("my-gcp-project", "us-central1-a", "lab-dev-worker-0") is True
    assert fake_gcp.drop_waits == 0 and fake_gcp.instances["lab-dev-worker-0"].status == "TERMINATED"


def test_an_operation_that_never_finishes_times_out(fake_gcp, monkeypatch):
    with pytest.raises(LabError) as caught:
        gcp_api.wait("my-gcp-project", "us-central1-a", {"name": "op", "status": "RUNNING"}, "starting x", timeout=-1)
    assert "did not finish" in caught.value.one_line()


def fake_gcp_error(code: int, message: str) -> dict:
    return {
        "error": {
            "code": code,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": "forbidden"}],
        }
    }
