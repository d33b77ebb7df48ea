"""The APIs `lab doctor` checks come from what the program creates: every GCP resource type infra/ registers (run
under mocks, with workers, so the tracker's IAM binding on the project is made too) is made through an API that
toolkit.gcp.diagnose names, and that API is among those doctor asks Service Usage about."""

from __future__ import annotations

from toolkit.gcp import diagnose


def test_every_resource_the_program_creates_has_its_api_checked(run):
    created = {r.type for r in run(workers=2).resources if r.type.startswith("gcp:")}
    unnamed = sorted(t for t in created if diagnose.service_of(t) is None)
    assert not unnamed, f"add these resource types to toolkit.gcp.diagnose.RESOURCE_SERVICES: {unnamed}"
    needed = {diagnose.service_of(t) for t in created}
    assert needed <= set(diagnose.REQUIRED_SERVICES), needed - set(diagnose.REQUIRED_SERVICES)
    assert "gcp:projects/iAMMember:IAMMember" in created
    assert diagnose.service_of("gcp:projects/iAMMember:IAMMember") == "cloudresourcemanager.googleapis.com"
    assert set(diagnose.SERVICE_USES) == set(diagnose.REQUIRED_SERVICES), "each API says what needs it"
