"""`lab doctor --target gcp` asks GCP what it can before the first `lab up`: every API the program creates
resources through (compute, iam, storage, cloudresourcemanager: serviceusage services.batchGet), the Compute
quotas the stack's VMs need (regions.get and projects.get `quotas[]`) and the organization policies that stop the
lab (Resource Manager getEffectiveOrgPolicy for compute.requireOsLogin and compute.vmExternalIpAccess). GCP is the
stand-in of tests/gcp/fake_gcp_api.py over real HTTP; the stack is the repository's Pulumi.dev.yaml
(my-gcp-project, one spot a2-highgpu-1g worker in us-central1)."""

from __future__ import annotations

import json

import pytest

from tests.gcp.fake_gcp_api import FakeGcp, Served

APIS = (
    "compute.googleapis.com",
    "iam.googleapis.com",
    "storage.googleapis.com",
    "cloudresourcemanager.googleapis.com",
)
ENABLE = f"gcloud services enable {' '.join(APIS)} --project my-gcp-project"
QUOTAS_PAGE = "https://console.cloud.google.com/iam-admin/quotas?project=my-gcp-project"


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
    off = "iam.googleapis.com storage.googleapis.com cloudresourcemanager.googleapis.com"
    assert found["fix"] == f"gcloud services enable {off} --project my-gcp-project"
    ran = lab("doctor", "--target", "gcp", env=gcp.env())
    assert ran.code == 1 and found["fix"] in ran.out and "GCP APIs" in ran.err


def test_the_resource_manager_api_off_is_named_with_what_needs_it_and_the_command(lab, gcp):
    # gcp.projects.IAMMember (infra/identity.py, the tracker's hold on its workers) is made through Resource
    # Manager's projects.getIamPolicy/setIamPolicy: with that API off the first `lab up` fails halfway.
    gcp.services = dict.fromkeys(APIS[:3], "ENABLED")
    found = doctor(lab, gcp)["GCP APIs"]
    assert not found["ok"] and found["required"]
    assert found["detail"].startswith("not enabled in my-gcp-project: cloudresourcemanager.googleapis.com (")
    assert "gcp.projects.IAMMember" in found["detail"]
    assert found["fix"] == "gcloud services enable cloudresourcemanager.googleapis.com --project my-gcp-project"


def test_a_gpu_quota_of_zero_is_named_with_the_quotas_page(lab, gcp):
    gcp.services = dict.fromkeys(APIS, "ENABLED")
    assert doctor(lab, gcp)["GCP quotas"]["ok"], "the stand-in's default project has the quota"
    gcp.quotas["us-central1"]["PREEMPTIBLE_NVIDIA_A100_GPUS"] = (0.0, 0.0)
    gcp.quotas["us-central1"]["NVIDIA_A100_GPUS"] = (0.0, 0.0)
    found = doctor(lab, gcp)["GCP quotas"]
    assert not found["ok"] and found["required"]
    assert found["detail"].startswith(
        "quota PREEMPTIBLE_NVIDIA_A100_GPUS (or NVIDIA_A100_GPUS) in us-central1 is 0 with 0 in use"
    ), found["detail"]
    assert (
        found["fix"] == f"ask for more at {QUOTAS_PAGE} (filter on PREEMPTIBLE_NVIDIA_A100_GPUS), or lower lab:workers"
    )
    asked = [path for method, path in gcp.requests if method == "GET" and "/compute/v1/" in path]
    assert "/compute/v1/projects/my-gcp-project/regions/us-central1" in asked
    assert "/compute/v1/projects/my-gcp-project" in asked


def test_a_new_projects_gpus_all_regions_of_zero_is_named(lab, gcp):
    gcp.services = dict.fromkeys(APIS, "ENABLED")
    gcp.quotas["global"]["GPUS_ALL_REGIONS"] = (0.0, 0.0)
    found = doctor(lab, gcp)["GCP quotas"]
    assert not found["ok"]
    assert "quota GPUS_ALL_REGIONS across all regions is 0" in found["detail"]
    assert "filter on GPUS_ALL_REGIONS" in found["fix"]


def test_apis_on_and_no_policy_in_the_way(lab, gcp):
    gcp.services = dict.fromkeys(APIS, "ENABLED")
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
    for name in ("GCP APIs", "GCP quotas", "OS Login policy", "external IP policy"):
        assert not found[name]["ok"] and not found[name]["required"], name
        assert found[name]["detail"].startswith("not checked: no Google credentials"), found[name]
    assert found["GCP APIs"]["fix"] == ENABLE
    assert found["GCP quotas"]["fix"] == QUOTAS_PAGE
