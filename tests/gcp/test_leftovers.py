"""The leftover check after `lab down` on gcp: a check that could not run (no credentials, no network, a zone
that did not answer) is said, and ends `lab down` with its own exit code (EXIT_UNVERIFIED), never as a
silent "nothing left". GCP is the stand-in of tests/gcp/fake_gcp_api.py, over real HTTP."""

from __future__ import annotations

import pytest

from tests.gcp.pulumi_fakes import gcp_settings
from toolkit.errors import EXIT_LEFTOVERS, EXIT_UNVERIFIED
from toolkit.labs import gcp as gcp_lab


@pytest.fixture
def settings():
    return gcp_settings()


def test_nothing_left_and_checked(settings, fake_gcp):
    fake_gcp.add("someone-elses-vm", labels={"lab": "prod"})
    said: list[str] = []
    check = gcp_lab.labelled_leftovers(settings, said.append)
    assert check.checked and list(check) == [] and said == []


def test_what_is_left_is_named(settings, fake_gcp):
    fake_gcp.add("lab-dev-worker-0", zone="us-central1-b", labels={"lab": "dev"}, status="TERMINATED")
    fake_gcp.disks["lab-dev-tracker-data"] = {"zone": "us-central1-a", "labels": {"lab": "dev"}}
    check = gcp_lab.labelled_leftovers(settings, lambda line: None)
    assert check.checked
    assert sorted(check) == ["disk lab-dev-tracker-data in us-central1-a", "instance lab-dev-worker-0 in us-central1-b"]
    error = gcp_lab.leftovers_error(list(check), check)
    assert error.code == EXIT_LEFTOVERS and "lab-dev-worker-0" in error.one_line()


def test_a_check_that_could_not_run_is_said_and_has_its_own_exit_code(settings, monkeypatch, tmp_path):
    monkeypatch.setenv("LAB_COMPUTE_API", "http://127.0.0.1:9/compute/v1")  # nothing answers there
    said: list[str] = []
    check = gcp_lab.labelled_leftovers(settings, said.append)
    assert not check.checked and list(check) == []
    assert any("could not ask GCP for leftovers" in line and "NOT verified" in line for line in said)
    error = gcp_lab.leftovers_error(list(check), check)
    assert error.code == EXIT_UNVERIFIED
    line = error.one_line()
    assert "could not be checked" in line and "\n" not in line
    assert "gcloud compute instances list --project my-gcp-project --filter=labels.lab=dev" in line
    assert "gcloud compute disks list --project my-gcp-project --filter=labels.lab=dev" in line


def test_no_credentials_is_a_check_that_did_not_run(settings, monkeypatch, tmp_path):
    monkeypatch.delenv("LAB_COMPUTE_API", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    from toolkit.gcp import api as gcp_api

    gcp_api._session.cache_clear()
    check = gcp_lab.labelled_leftovers(settings, lambda line: None)
    assert not check.checked and "no Google credentials" in check.why
    assert gcp_lab.leftovers_error([], check).code == EXIT_UNVERIFIED


def test_leftovers_found_while_a_zone_was_silent_say_both(settings, fake_gcp):
    fake_gcp.add("lab-dev-tracker", labels={"lab": "dev"})
    fake_gcp.unreachable_zones = ("europe-west4-b",)
    check = gcp_lab.labelled_leftovers(settings, lambda line: None)
    error = gcp_lab.leftovers_error(list(check), check)
    assert error.code == EXIT_LEFTOVERS
    assert "lab-dev-tracker" in error.one_line() and "europe-west4-b" in error.one_line()
