"""toolkit.gcp.diagnose reads real GCP texts (tests/data/gcp_errors, sources in SOURCES.md): an API that is off
gives the exact `gcloud services enable` command; an organization policy is named with what to do; look-alikes
(a missing quota project, a stockout) are not mistaken for them."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.gcp import capacity
from toolkit.gcp import diagnose as gcp_errors
from toolkit.hosts import ssh as remote

DATA = Path(__file__).resolve().parents[1] / "data" / "gcp_errors"
ENABLE = (
    "gcloud services enable compute.googleapis.com iam.googleapis.com storage.googleapis.com "
    "cloudresourcemanager.googleapis.com --project my-proj"
)


def text(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("name", "service"),
    [
        ("api-disabled-iam-with-details.txt", "iam.googleapis.com"),
        ("api-disabled-compute.txt", "compute.googleapis.com"),
    ],
)
def test_an_api_that_is_off_names_the_command_that_enables_it(name, service):
    found = gcp_errors.classify(text(name))
    assert found == gcp_errors.ApiDisabled(service)
    error = gcp_errors.explain(text(name), "my-proj")
    assert error is not None
    line = error.one_line()
    assert ENABLE in line and service in line and "\n" not in line
    assert capacity.classify(text(name)) is None, "not a capacity problem either"


def test_a_missing_quota_project_is_not_an_api_to_enable():
    assert gcp_errors.classify(text("not-api-disabled-quota-project.txt")) is None
    assert gcp_errors.quota_project_missing(text("not-api-disabled-quota-project.txt"))


@pytest.mark.parametrize("name", ["org-policy-external-ip.txt", "org-policy-external-ip-gcloud.txt"])
def test_external_ips_refused_by_policy(name):
    found = gcp_errors.classify(text(name))
    assert isinstance(found, gcp_errors.OrgPolicy) and found.constraint == gcp_errors.EXTERNAL_IP
    line = found.error("my-proj").one_line()
    assert "constraints/compute.vmExternalIpAccess" in line
    assert "gcloud resource-manager org-policies allow compute.vmExternalIpAccess" in line
    assert found.instance and found.instance in line, "the instance GCP named is the value to allow"


def test_stockouts_and_quotas_are_not_setup_problems():
    for name in ("stockout-operation.txt", "stockout-with-details.txt", "quota-region.txt"):
        assert gcp_errors.classify(text(name)) is None, name


def test_os_login_enforced_shows_up_as_a_refused_login():
    # requireOsLogin gives no error from GCP: the VM ignores metadata ssh-keys and SSH says "Permission denied".
    host = remote.Host("tracker", "34.79.69.80", remote.TRACKER)
    pinned = remote.Access("lab", Path("/k"), Path("/kh"), strict=True)
    line = remote.failure(pinned, host, text("ssh-denied-os-login.txt"), "no answer").one_line()
    assert "Permission denied (publickey)" in line and "constraints/compute.requireOsLogin" in line
    error = gcp_errors.OrgPolicy(gcp_errors.OS_LOGIN).error("my-proj")
    assert "gcloud resource-manager org-policies disable-enforce compute.requireOsLogin --project=my-proj" in (
        error.one_line()
    )
