"""The Automation API seam without the Pulumi CLI: a fake `pulumi` shows the exact commands the Automation
API runs for lab, and hands back real engine texts; the seam turns them into lab's errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gcp.pulumi_fakes import FakeCli, gcp_settings, path_without_pulumi
from toolkit import pulumi_engine, schema
from toolkit.errors import EXIT_LOCKED, LabError

ROOT = Path(__file__).resolve().parents[2]
STOCKOUT = (
    "error: 1 error occurred:\n\t* Error creating instance: googleapi: Error 503: The zone "
    "'projects/my-gcp-project/zones/us-central1-a' does not have enough resources available to fulfill the "
    "request.  Try a different zone, or try again later., resourceExhausted\n"
)
# The diy backend's own words when another update holds the stack.
LOCKED = (
    "error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end or delete "
    "the lock file with `pulumi cancel`.\n  file:///home/me/.lab/pulumi/.pulumi/locks/lab/dev/1f2e.json: "
    "created by me@laptop (pid 4242) at 2026-11-22T03:00:00Z\n"
)


@pytest.fixture
def settings() -> schema.Settings:
    return gcp_settings(**{"lab:zones": ["us-central1-a", "us-central1-b"]})


@pytest.fixture
def cli(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCli:
    monkeypatch.setenv("PATH", path_without_pulumi())
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "test passphrase")
    return FakeCli(isolated / ".lab")


def test_up_runs_the_project_program_with_lab_backend_and_the_chosen_zone(cli, settings, isolated):
    engine = pulumi_engine.AutomationEngine(settings, ROOT)
    outputs = engine.up(pulumi_engine.RunChoices(worker_zone="us-central1-b"), lambda line: None)
    assert outputs == {}
    up = next(c for c in cli.calls() if "up" in c["argv"])
    assert up["argv"][up["argv"].index("--stack") + 1] == "dev"
    assert "--refresh" in up["argv"], "a preempted worker is seen (and started again) only after a refresh"
    assert "--yes" in up["argv"] and "--skip-preview" in up["argv"]
    assert up["env"]["PULUMI_BACKEND_URL"] == f"file://{isolated / '.lab' / 'pulumi'}"
    assert up["env"]["LAB_WORKER_ZONE"] == "us-central1-b"
    assert up["env"]["LAB_WORKER_ON_DEMAND"] == ""
    assert (isolated / ".lab" / "pulumi").is_dir(), "the local state folder is created"


def test_on_demand_choice_reaches_the_program(cli, settings):
    engine = pulumi_engine.AutomationEngine(settings, ROOT)
    engine.up(pulumi_engine.RunChoices(worker_zone="us-central1-a", on_demand=True), lambda line: None)
    up = next(c for c in cli.calls() if "up" in c["argv"])
    assert up["env"]["LAB_WORKER_ON_DEMAND"] == "1"


def test_an_engine_error_keeps_the_engine_text_and_says_one_line(cli, settings):
    cli.answer("up", stdout="Updating (dev):\n", stderr=STOCKOUT, code=255)
    engine = pulumi_engine.AutomationEngine(settings, ROOT)
    with pytest.raises(pulumi_engine.EngineFailed) as caught:
        engine.up(pulumi_engine.RunChoices(worker_zone="us-central1-a"), lambda line: None)
    assert "does not have enough resources available" in caught.value.text
    assert "\n" not in caught.value.one_line()
    assert caught.value.one_line().startswith("Pulumi failed while creating the lab: ")


def test_a_locked_stack_is_refused_with_its_own_exit_code(cli, settings):
    cli.answer("destroy", stderr=LOCKED, code=255)
    engine = pulumi_engine.AutomationEngine(settings, ROOT)
    with pytest.raises(LabError) as caught:
        engine.destroy(lambda line: None)
    assert caught.value.code == EXIT_LOCKED
    assert "is locked" in caught.value.one_line() and "pulumi cancel" in caught.value.one_line()


def test_without_a_cli_the_error_says_how_to_install_one(settings, monkeypatch):
    monkeypatch.setenv("PATH", path_without_pulumi())
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "x")
    with pytest.raises(LabError) as caught:
        pulumi_engine.AutomationEngine(settings, ROOT).destroy(lambda line: None)
    assert "lab doctor --install-pulumi" in caught.value.one_line()


def test_the_passphrase_must_come_from_the_environment(cli, settings, monkeypatch):
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE")
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE_FILE", raising=False)
    with pytest.raises(LabError) as caught:
        pulumi_engine.AutomationEngine(settings, ROOT)
    assert "PULUMI_CONFIG_PASSPHRASE" in caught.value.one_line()
    assert not [c for c in cli.calls() if "up" in c["argv"]], "nothing ran without the passphrase"
