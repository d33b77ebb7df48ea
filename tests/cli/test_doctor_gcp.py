"""`lab doctor --target gcp` asks GCP what it can before the first `lab up`: the compute, iam and storage APIs
(serviceusage services.batchGet) and the organization policies that stop the lab (Resource Manager
getEffectiveOrgPolicy for compute.requireOsLogin and compute.vmExternalIpAccess). GCP is the stand-in of
tests/gcp/fake_gcp_api.py over real HTTP; the stack is the repository's Pulumi.dev.yaml (my-gcp-project)."""

from __future__ import annotations

import json

import pytest

from tests.gcp.fake_gcp_api import FakeGcp, Served

ENABLE = (
    "gcloud services enable compute.googleapis.com iam.googleapis.com storage.googleapis.com --project my-gcp-project"
)


@pytest.fixture
def gcp():
    with Served(FakeGcp()) as fake:
        yield fake


def doctor(lab, fake: FakeGcp) -> dict[str, dict]:
    ran = lab("doctor", "--target", "gcp", "--json", env=fake.env())
    return {c["name"]: c for c in json.loads(ran.out)["checks"]}


def test_apis_off_are_named_with_the_command(lab, gcp):
    gcp.services = {"compute.googleapis.com": "ENABLED"}
    found = doctor(lab, gcp)["GCP APIs"]
    assert not found["ok"] and found["required"]
    assert "iam.googleapis.com" in found["detail"] and "storage.googleapis.com" in found["detail"]
    assert "compute.googleapis.com" not in found["detail"]
    assert found["fix"] == ENABLE
    ran = lab("doctor", "--target", "gcp", env=gcp.env())
    assert ran.code == 1 and ENABLE in ran.out and "GCP APIs" in ran.err


def test_apis_on_and_no_policy_in_the_way(lab, gcp):
    gcp.services = dict.fromkeys(("compute.googleapis.com", "iam.googleapis.com", "storage.googleapis.com"), "ENABLED")
    found = doctor(lab, gcp)
    assert found["GCP APIs"]["ok"]
    assert found["OS Login policy"]["ok"] and found["external IP policy"]["ok"]
    asked = [path for method, path in gcp.requests if method == "POST"]
    assert "/resourcemanager/v1/projects/my-gcp-project:getEffectiveOrgPolicy" in asked


def test_policies_in_the_way_say_which_and_what_to_do(lab, gcp):
    gcp.org_policies = {
        "constraints/compute.requireOsLogin": {"booleanPolicy": {"enforced": True}},
        "constraints/compute.vmExternalIpAccess": {"listPolicy": {"allValues": "DENY"}},
    }
    found = doctor(lab, gcp)
    os_login, external = found["OS Login policy"], found["external IP policy"]
    assert not os_login["ok"] and os_login["required"]
    assert "constraints/compute.requireOsLogin is enforced" in os_login["detail"]
    assert os_login["fix"].startswith("ask an organization policy admin to run `gcloud resource-manager org-policies")
    assert not external["ok"] and "denies every VM an external IP" in external["detail"]
    assert "org-policies allow compute.vmExternalIpAccess" in external["fix"]


def test_an_allow_list_that_names_other_vms_is_flagged(lab, gcp):
    gcp.org_policies = {
        "constraints/compute.vmExternalIpAccess": {
            "listPolicy": {"allowedValues": ["projects/my-gcp-project/zones/us-central1-a/instances/bastion"]}
        }
    }
    found = doctor(lab, gcp)["external IP policy"]
    assert not found["ok"] and "only to 1 listed VM" in found["detail"]


def test_what_gcp_cannot_answer_is_optional_and_says_why(lab, tmp_path):
    # No stand-in: the real endpoints and no credentials. Nothing is asked, nothing fails the run for it.
    ran = lab(
        "doctor",
        "--target",
        "gcp",
        "--json",
        env={"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "none.json")},
    )
    found = {c["name"]: c for c in json.loads(ran.out)["checks"]}
    for name in ("GCP APIs", "OS Login policy", "external IP policy"):
        assert not found[name]["ok"] and not found[name]["required"], name
        assert found[name]["detail"].startswith("not checked: no Google credentials"), found[name]
    assert found["GCP APIs"]["fix"] == ENABLE
