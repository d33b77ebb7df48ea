"""`lab up` on gcp, Pulumi's part: preview with the cost, confirmation, zone failover on real stockout texts,
quota errors named, on-demand fallback only when allowed. The engine is a scripted stand-in (the real one
needs the Pulumi CLI and GCP); zone choice, memory, prices and errors are lab's real code."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gcp.fake_gcp_api import FakeGcp
from tests.gcp.pulumi_fakes import gcp_settings, write_checkpoint
from toolkit.config import schema
from toolkit.errors import LabError
from toolkit.gcp import pulumi_engine
from toolkit.labs import gcp as gcp_lab

DATA = Path(__file__).resolve().parents[1] / "data" / "gcp_errors"
STOCKOUT = (
    "error: 1 error occurred:\n\t* Error creating instance: googleapi: Error 503: The zone "
    "'projects/my-gcp-project/zones/{zone}' does not have enough resources available to fulfill the "
    "request.  Try a different zone, or try again later., resourceExhausted\n"
)
QUOTA = (
    "error: 1 error occurred:\n\t* Error creating instance: googleapi: Error 403: Quota "
    "'PREEMPTIBLE_NVIDIA_A100_GPUS' exceeded.  Limit: 0.0 in region us-central1., quotaExceeded\n"
)


@pytest.fixture(autouse=True)
def gcs(emulator: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first `lab up` asks GCS whether an older lab kept the bucket outside any state (toolkit.gcp.artifact_bucket):
    here gcp-storage-emulator answers, holding no bucket."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)


@pytest.fixture(autouse=True)
def quotas(fake_gcp: FakeGcp) -> FakeGcp:
    """`lab up` reads the project's quotas before anything is created (Compute regions.get and projects.get): here
    the stand-in of tests/gcp/fake_gcp_api.py answers, with a project that has GPU quota in us-central1."""
    return fake_gcp


@pytest.fixture
def settings() -> schema.Settings:
    return gcp_settings(**{"lab:zones": ["us-central1-a", "us-central1-b", "us-central1-c"], "lab:workers": 2})


class ScriptedEngine:
    """Answers `up` per zone: a stockout text for the zones in `full`, else outputs."""

    def __init__(self, full: set[str], quota: bool = False, spot_full_everywhere: bool = False) -> None:
        self.full, self.quota, self.spot_full_everywhere = full, quota, spot_full_everywhere
        self.ups: list[pulumi_engine.RunChoices] = []
        self.previews: list[pulumi_engine.RunChoices] = []

    def preview(self, choices, say):
        self.previews.append(choices)
        return pulumi_engine.Plan(
            counts={"create": 9, "same": 0}, steps=[("create", "gcp:compute/instance:Instance", "worker-0")]
        )

    def up(self, choices, say):
        self.ups.append(choices)
        if self.quota:
            raise pulumi_engine.EngineFailed("Pulumi failed", QUOTA)
        if choices.worker_zone in self.full and not (choices.on_demand and not self.spot_full_everywhere):
            raise pulumi_engine.EngineFailed("Pulumi failed", STOCKOUT.format(zone=choices.worker_zone))
        if self.spot_full_everywhere and not choices.on_demand:
            raise pulumi_engine.EngineFailed("Pulumi failed", STOCKOUT.format(zone=choices.worker_zone))
        return {"tracker_external_ip": "198.51.100.10", "worker_zone": choices.worker_zone}

    def destroy(self, say):
        raise AssertionError("up never destroys")

    def persistent(self):
        return KeptStack(self)


class KeptStack:
    """The persistent stack's engine: its `up` comes once, before the lab's first `up`."""

    def __init__(self, lab) -> None:
        self.lab = lab

    def up(self, choices, say):
        assert not self.lab.ups, "the bucket is kept before the lab's stack grants roles on it"
        self.lab.kept = getattr(self.lab, "kept", 0) + 1
        return {"bucket_name": "my-gcp-project-lab-dev"}


def provision(settings, engine, *, yes=True, preview_only=False, fallback=False, shown=None):
    return gcp_lab.provision(
        settings,
        engine,
        confirm=gcp_lab.confirm_with(yes),
        say=lambda line: None,
        show=lambda plan, lines, total: (shown if shown is not None else []).append((plan, lines, total)),
        preview_only=preview_only,
        fallback_on_demand=fallback,
    )


def test_preview_only_shows_changes_and_cost_and_creates_nothing(settings):
    engine = ScriptedEngine(full=set())
    shown: list = []
    assert provision(settings, engine, preview_only=True, shown=shown) is None
    assert engine.ups == [] and not hasattr(engine, "kept"), "a preview changes nothing, the persistent stack neither"
    ((plan, lines, total),) = shown
    assert plan.counts["create"] == 9
    assert total > 0 and total == pytest.approx(sum(line.usd_per_hour for line in lines))


def test_without_yes_and_without_a_terminal_nothing_is_changed(settings):
    engine = ScriptedEngine(full=set())
    with pytest.raises(LabError, match="pass --yes"):
        provision(settings, engine, yes=False)
    assert engine.ups == []


def test_a_stocked_out_zone_is_skipped_and_remembered(settings):
    engine = ScriptedEngine(full={"us-central1-a"})
    done = provision(settings, engine)
    assert [c.worker_zone for c in engine.ups] == ["us-central1-a", "us-central1-b"]
    assert done.zone == "us-central1-b" and done.on_demand is False
    assert engine.kept == 1, "the persistent stack's up runs once, before the first zone is tried"
    # The next `up` starts where the workers are, and does not try the stocked-out zone first again.
    engine = ScriptedEngine(full=set())
    provision(settings, engine)
    assert engine.previews[0].worker_zone == "us-central1-b"


def test_the_zone_the_workers_run_in_comes_first(settings, isolated):
    write_checkpoint(isolated / ".lab" / "pulumi", "dev", {"worker_zone": "us-central1-c"}, [])
    engine = ScriptedEngine(full=set())
    provision(settings, engine)
    assert [c.worker_zone for c in engine.ups] == ["us-central1-c"]


def test_no_capacity_anywhere_names_the_zones_and_the_fallback(settings):
    engine = ScriptedEngine(full={"us-central1-a", "us-central1-b", "us-central1-c"})
    with pytest.raises(LabError) as caught:
        provision(settings, engine)
    message = caught.value.one_line()
    assert all(zone in message for zone in ("us-central1-a", "us-central1-b", "us-central1-c"))
    assert "--fallback-on-demand" in message
    assert all(not c.on_demand for c in engine.ups)


def test_fallback_on_demand_only_after_every_zone_said_no(settings):
    engine = ScriptedEngine(full=set(), spot_full_everywhere=True)
    done = provision(settings, engine, fallback=True)
    assert [c.on_demand for c in engine.ups] == [False, False, False, True]
    assert done.on_demand is True


def test_a_quota_error_is_named_and_not_retried_elsewhere(settings):
    engine = ScriptedEngine(full=set(), quota=True)
    with pytest.raises(LabError) as caught:
        provision(settings, engine)
    message = caught.value.one_line()
    assert "PREEMPTIBLE_NVIDIA_A100_GPUS" in message and "us-central1" in message
    assert len(engine.ups) == 1


class FailsWith(ScriptedEngine):
    """`up` fails with one of the real GCP texts kept in tests/data/gcp_errors (SOURCES.md has each source)."""

    def __init__(self, text: str) -> None:
        super().__init__(full=set())
        self.text = text

    def up(self, choices, say):
        self.ups.append(choices)
        raise pulumi_engine.EngineFailed("Pulumi failed while creating the lab: update failed", self.text)


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        (
            "api-disabled-compute.txt",
            "gcloud services enable compute.googleapis.com iam.googleapis.com storage.googleapis.com "
            "cloudresourcemanager.googleapis.com",
        ),
        ("org-policy-external-ip.txt", "constraints/compute.vmExternalIpAccess"),
    ],
)
def test_a_project_setup_problem_is_named_with_its_fix_and_not_retried_elsewhere(settings, sample, expected):
    engine = FailsWith((DATA / sample).read_text())
    with pytest.raises(LabError) as caught:
        provision(settings, engine)
    assert expected in caught.value.one_line()
    assert len(engine.ups) == 1, "another zone would not help"


# -- the quota pre-flight ------------------------------------------------------------------------------------------


def test_not_enough_gpu_quota_refuses_before_anything_is_created(settings, quotas):
    """Two spot A100 workers and no A100 quota: GCP would create the tracker, its disk and address, then refuse the
    workers (and the tracker bills on). The pre-flight refuses first, in one line, with the page that fixes it."""
    quotas.quotas["us-central1"]["PREEMPTIBLE_NVIDIA_A100_GPUS"] = (0.0, 0.0)
    quotas.quotas["us-central1"]["NVIDIA_A100_GPUS"] = (0.0, 0.0)
    engine = ScriptedEngine(full=set())
    with pytest.raises(LabError) as caught:
        provision(settings, engine)
    line = caught.value.one_line()
    assert "\n" not in line
    assert line.startswith("not enough GCP quota for the stack dev: quota PREEMPTIBLE_NVIDIA_A100_GPUS")
    assert "needs 2" not in line and "need 2" in line and "nothing was created" in line
    assert "https://console.cloud.google.com/iam-admin/quotas?project=my-gcp-project" in line
    assert engine.previews == [] and engine.ups == [], "no Pulumi run at all"


def test_workers_already_up_are_not_counted_again(settings, quotas, isolated):
    """A second `lab up` of a lab whose two workers run (their GPUs in the usage) needs no more quota."""
    quotas.quotas["us-central1"]["PREEMPTIBLE_NVIDIA_A100_GPUS"] = (2.0, 2.0)
    instance = "gcp:compute/instance:Instance"
    resources = [(instance, "tracker"), (instance, "worker-0"), (instance, "worker-1")]
    write_checkpoint(isolated / ".lab" / "pulumi", "dev", {"worker_zone": "us-central1-a"}, resources)
    engine = ScriptedEngine(full=set())
    assert provision(settings, engine).zone == "us-central1-a"


def test_a_short_quota_is_only_a_warning_for_a_preview(settings, quotas):
    quotas.quotas["global"]["GPUS_ALL_REGIONS"] = (1.0, 0.0)
    engine = ScriptedEngine(full=set())
    heard: list[str] = []
    done = gcp_lab.provision(
        settings,
        engine,
        confirm=gcp_lab.confirm_with(True),
        say=heard.append,
        show=lambda *shown: None,
        preview_only=True,
    )
    assert done is None and len(engine.previews) == 1
    assert any("GPUS_ALL_REGIONS" in line and "`lab up` would refuse" in line for line in heard), heard


def test_quotas_gcp_cannot_tell_are_said_and_up_goes_on(settings, quotas):
    quotas.fail = {
        "/regions/us-central1": (
            403,
            {
                "error": {
                    "code": 403,
                    "message": "Required 'compute.regions.get' permission for 'projects/my-gcp-project'",
                }
            },
        )
    }
    heard: list[str] = []
    engine = ScriptedEngine(full=set())
    gcp_lab.provision(settings, engine, confirm=gcp_lab.confirm_with(True), say=heard.append, show=lambda *a: None)
    assert len(engine.ups) == 1
    assert any(line.startswith("warning: the project's quotas could not be read") for line in heard), heard
