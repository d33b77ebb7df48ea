"""The Automation API seam without the Pulumi CLI: a fake `pulumi` shows the exact commands and environment the
Automation API runs for lab, and answers with real engine texts and events (each built from Pulumi's source or
from tests/data/gcp_errors, see tests/gcp/pulumi_fakes.py); the seam turns them into lab's plans and errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.gcp.pulumi_fakes import (
    FakeCli,
    diagnostics,
    failed_update,
    gcp_error,
    gcp_settings,
    path_without_pulumi,
    preview_events,
    write_checkpoint,
)
from toolkit.config import schema
from toolkit.errors import EXIT_LOCKED, LabError
from toolkit.gcp import artifact_bucket, capacity, pulumi_engine, pulumi_state

ROOT = Path(__file__).resolve().parents[2]
INSTANCE = "gcp:compute/instance:Instance"
# The diy backend's own words when another update holds the stack (pkg/backend/diy/lock.go checkForLock), with
# the lock where it keeps it (.pulumi/locks/organization/<project>/<stack>/<uuid>.json).
LOCKED = (
    "error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end or delete "
    "the lock file with `pulumi cancel`.\n  file:///home/me/.lab/pulumi/.pulumi/locks/organization/lab/dev/"
    "2c9d5a41-7f0e-4b8a-9c1d-3e5f6a7b8c9d.json: created by me@laptop (pid 4242) at 2026-11-22T03:00:00Z\n"
)
# A failed `pulumi up` as the engine prints it: the Diagnostics section of the real stockout text (the worker's
# error, then the stack's closing "update failed").
STOCKOUT = failed_update(gcp_error("stockout-waiting-for-instance.txt"))


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


def test_an_engine_error_says_the_clouds_reason_in_one_line(cli, settings):
    """Real `pulumi up` output ends its diagnostics with the stack's "error: update failed": the user is shown
    the failing resource and GCP's reason instead, and capacity still reads the whole text."""
    cli.answer("up", stdout=STOCKOUT, code=255)
    engine = pulumi_engine.AutomationEngine(settings, ROOT)
    with pytest.raises(pulumi_engine.EngineFailed) as caught:
        engine.up(pulumi_engine.RunChoices(worker_zone="us-central1-a"), lambda line: None)
    line = caught.value.one_line()
    assert line.startswith("Pulumi failed while creating the lab: worker-0: Error waiting for instance to create: ")
    assert "does not have enough resources available" in line and "update failed" not in line
    assert "\n" not in line
    found = capacity.classify(caught.value.text)
    assert isinstance(found, capacity.Stockout) and found.zone == "us-west1-c"


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("stockout-operation.txt", "ZONE_RESOURCE_POOL_EXHAUSTED: The zone 'projects/fontbakery-168509/zones/"),
        ("quota-region.txt", "google_compute_address.master: Quota 'STATIC_ADDRESSES' exceeded."),
        ("not-capacity-accelerator-not-found.txt", "acceleratorTypes/nvidia-tesla-v100' was not found"),
    ],
)
def test_each_real_gcp_text_reaches_the_one_line_message(source, reason):
    """Each kept GCP text, as the resource's error of a failed update (the provider's `1 error occurred:` list):
    the message carries GCP's last line, not Pulumi's closing words."""
    text = failed_update(diagnostics("gcp:compute:Instance", "worker-0", gcp_error(source)))
    said = pulumi_engine.engine_reason(text)
    assert said.startswith("worker-0: ") and reason in said, said
    assert "update failed" not in said and "error occurred" not in said


def test_a_program_that_raised_is_told_by_its_exception():
    text = failed_update(
        "Diagnostics:\n  pulumi:pulumi:Stack (lab-dev):\n    error: Program failed with an unhandled exception:\n"
        '    Traceback (most recent call last):\n      File "/work/main/infra/__main__.py", line 4, in <module>\n'
        "        import stack_config\n    ModuleNotFoundError: No module named 'toolkit'\n\n"
    )
    assert pulumi_engine.engine_reason(text) == "ModuleNotFoundError: No module named 'toolkit'"


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


# -- the program's Python ------------------------------------------------------------------------------------


def test_the_program_runs_with_the_python_that_runs_lab(cli, settings, monkeypatch, tmp_path):
    """`~/venv/bin/lab up` without an activated venv: the first python3 on PATH is another Python, and the
    program (which imports toolkit and pulumi) must still run with lab's. Pulumi's Python language host runs
    $PULUMI_PYTHON_CMD (sdk/python/toolchain/pip.go@01ba6bcc CommandPath) unless Pulumi.yaml names a
    virtualenv or another toolchain (toolchain.go ResolveToolchain, pip.go Command)."""
    other = tmp_path / "system-bin"
    other.mkdir()
    (other / "python3").symlink_to("/usr/bin/python3")
    monkeypatch.setenv("PATH", f"{other}{':'}{path_without_pulumi()}")
    engine = pulumi_engine.AutomationEngine(settings, ROOT)
    engine.up(pulumi_engine.RunChoices(worker_zone="us-central1-a"), lambda line: None)
    engine.destroy(lambda line: None)
    for verb in ("up", "destroy"):
        call = next(c for c in cli.calls() if verb in c["argv"])
        assert call["env"]["PULUMI_PYTHON_CMD"] == sys.executable, verb
    runtime = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["runtime"]
    options = runtime.get("options", {}) if isinstance(runtime, dict) else {}
    assert not {"virtualenv", "toolchain"} & set(options), "either would make Pulumi ignore PULUMI_PYTHON_CMD"


# -- a broken CLI --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["crash", "garbage", "not-a-program", "not-executable"])
def test_a_broken_cli_is_a_one_line_error_naming_it(cli, settings, how):
    cli.breaks(how)
    with pytest.raises(LabError) as caught:
        pulumi_engine.AutomationEngine(settings, ROOT).destroy(lambda line: None)
    line = caught.value.one_line()
    assert line.startswith("the Pulumi CLI cannot be used: ") and str(cli.path) in line, line
    assert "lab doctor --install-pulumi" in line, "the fix for the CLI under LAB_HOME"
    assert "\n" not in line
    assert not [c for c in cli.calls() if "destroy" in c["argv"]]


def test_a_broken_cli_first_on_path_says_to_repair_or_remove_it(settings, monkeypatch, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    broken = bin_dir / "pulumi"
    broken.write_text("#!/bin/sh\necho 'panic: runtime error: index out of range [3] with length 3' >&2\nexit 2\n")
    broken.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{path_without_pulumi()}")
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "x")
    with pytest.raises(LabError) as caught:
        pulumi_engine.AutomationEngine(settings, ROOT)
    line = caught.value.one_line()
    assert f"{broken} does not run" in line and "exit code 2" in line and "panic: runtime error" in line
    assert f"{broken} is the first `pulumi` on PATH: repair or remove it" in line


def test_a_crashing_cli_through_lab_up_is_one_line_without_traceback(lab, cli, isolated):
    cli.breaks("crash")
    ran = lab(
        "up", "--target", "gcp", "--preview", env={"PATH": path_without_pulumi(), "PULUMI_CONFIG_PASSPHRASE": "x"}
    )
    assert ran.code == 1, ran.err
    assert "Traceback" not in ran.err
    (line,) = [line for line in ran.err.splitlines() if line.startswith("error:")]
    assert line.startswith("error: the Pulumi CLI cannot be used:") and str(cli.path) in line


# -- preview -------------------------------------------------------------------------------------------------

# A preview with --refresh of a lab that is up, whose worker's machine type changed: the engine reads every
# resource back (refresh), then sends one logical step per resource, plus a replacement's physical halves
# (create-before-delete: create-replacement, replace, delete-replaced). A second worker is new.
EXISTING = [
    ("pulumi:pulumi:Stack", "lab-dev"),
    ("pulumi:providers:gcp", "default_8_30_0"),
    ("gcp:compute/network:Network", "lab"),
    ("gcp:compute/firewall:Firewall", "ssh"),
    ("gcp:storage/bucket:Bucket", "artifacts"),
    (INSTANCE, "tracker"),
    (INSTANCE, "worker-0"),
]
STEPS = (
    [("refresh", kind, name) for kind, name in EXISTING[2:]]
    + [("same", kind, name) for kind, name in EXISTING[:6]]
    + [("create-replacement", INSTANCE, "worker-0"), ("replace", INSTANCE, "worker-0")]
    + [("create", INSTANCE, "worker-1"), ("delete-replaced", INSTANCE, "worker-0")]
)
# The summary counts logical steps only (the engine's OnResourceStepPost: `op, record := step.Op(), step.Logical()`).
SUMMARY = {"same": 6, "replace": 1, "create": 1}


@pytest.mark.parametrize("version", ["v3.272.0", "v3.200.0"], ids=["events-over-grpc", "events-in-a-file"])
def test_a_preview_shows_each_changing_resource_once(cli, settings, version):
    cli.reports_version(version)
    cli.events("preview", preview_events(STEPS, SUMMARY))
    plan = pulumi_engine.AutomationEngine(settings, ROOT).preview(
        pulumi_engine.RunChoices(worker_zone="us-central1-a"), lambda line: None
    )
    assert plan.steps == [("replace", INSTANCE, "worker-0"), ("create", INSTANCE, "worker-1")]
    assert plan.counts == {"replace": 1, "create": 1, "same": 4}
    assert plan.changes == 2
    preview = next(c for c in cli.calls() if "preview" in c["argv"])
    assert "--refresh" in preview["argv"]
    event_log = preview["argv"][preview["argv"].index("--event-log") + 1]
    assert event_log.startswith("tcp://127.0.0.1:") == (version == "v3.272.0"), event_log


def test_a_leftover_of_an_earlier_replacement_is_shown_as_its_deletion(cli, settings):
    steps = [("same", INSTANCE, "tracker"), ("same", INSTANCE, "worker-0"), ("delete-replaced", INSTANCE, "worker-0")]
    cli.events("preview", preview_events(steps, {"same": 2}))
    plan = pulumi_engine.AutomationEngine(settings, ROOT).preview(pulumi_engine.RunChoices(), lambda line: None)
    assert plan.steps == [("delete", INSTANCE, "worker-0")] and plan.changes == 1


def test_lab_up_preview_prints_one_line_per_changing_resource(lab, cli, isolated):
    # The lab is up. A preview changes nothing: the persistent stack (and GCS) is not asked.
    bucket = ("gcp:storage/bucket:Bucket", "my-gcp-project-lab-dev")
    write_checkpoint(isolated / ".lab" / "pulumi", "dev", {}, [bucket, (INSTANCE, "tracker"), (INSTANCE, "worker-0")])
    cli.events("preview", preview_events(STEPS, SUMMARY))
    ran = lab(
        "up", "--target", "gcp", "--preview", env={"PATH": path_without_pulumi(), "PULUMI_CONFIG_PASSPHRASE": "x"}
    )
    assert ran.code == 0, ran.err
    lines = ran.out.splitlines()
    assert lines[0].startswith("preview of dev: 1 to create, 0 to update, 1 to replace, 0 to delete, 4 unchanged")
    steps = [line.split() for line in lines[1:] if line.split()[1:2] in (["create"], ["replace"], ["refresh"])]
    assert steps == [["+-", "replace", "Instance", "worker-0"], ["+", "create", "Instance", "worker-1"]]
    assert "refresh" not in ran.out and "create-replacement" not in ran.out


def test_lab_up_shows_the_failing_resource_and_gcps_reason(lab, cli, isolated, project):
    """What the user sees when `pulumi up` fails for a reason that is neither a stockout nor a quota (after the
    persistent stack's `up`, which went well)."""
    bucket = ("gcp:storage/bucket:Bucket", "my-gcp-project-lab-dev")  # kept by the persistent stack
    write_checkpoint(isolated / ".lab" / "pulumi", "dev", {}, [bucket], project="lab-persistent")
    write_checkpoint(isolated / ".lab" / "pulumi", "dev", {}, [(INSTANCE, "tracker")])
    cli.events("preview", preview_events([("create", INSTANCE, "worker-0")], {"create": 1}))
    error = gcp_error("not-capacity-accelerator-not-found.txt")
    cli.answer("up", stdout=failed_update(diagnostics("gcp:compute:Instance", "worker-0", error)), code=255)
    env = {"PATH": path_without_pulumi(), "PULUMI_CONFIG_PASSPHRASE": "x", "LAB_PROJECT_DIR": str(project)}
    ran = lab("up", "--target", "gcp", "--yes", env=env)
    assert ran.code == 1, ran.err
    last = ran.err.strip().splitlines()[-1]
    assert last.startswith("error: Pulumi failed while creating the lab: worker-0: ")
    assert last.endswith("acceleratorTypes/nvidia-tesla-v100' was not found"), last
    ups = [c["cwd"] for c in cli.calls() if "up" in c["argv"]]
    assert ups == [str(project / "infra" / "persistent"), str(project)], "the bucket is kept first"


def test_lab_up_without_gpu_quota_refuses_before_the_pulumi_run(lab, cli, isolated, fake_gcp):
    """A first `lab up` with no A100 quota: one line, and the engine never previewed or created anything."""
    fake_gcp.quotas["us-central1"]["PREEMPTIBLE_NVIDIA_A100_GPUS"] = (0.0, 0.0)
    fake_gcp.quotas["us-central1"]["NVIDIA_A100_GPUS"] = (0.0, 0.0)
    ran = lab("up", "--target", "gcp", "--yes", env={"PATH": path_without_pulumi(), "PULUMI_CONFIG_PASSPHRASE": "x"})
    assert ran.code == 1, ran.err
    errors = [line for line in ran.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "quota PREEMPTIBLE_NVIDIA_A100_GPUS" in errors[0] and "nothing was created" in errors[0]
    verbs = {a for c in cli.calls() for a in c["argv"] if a in ("preview", "up", "refresh", "import")}
    assert verbs == set(), cli.calls()
    from toolkit.gcp import pulumi_state

    state = pulumi_state.read(f"file://{isolated / '.lab' / 'pulumi'}", "dev")
    assert state is None or not state.cloud_resources


# -- the persistent stack --------------------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder as `lab init` leaves it: Pulumi.yaml, the stack file, infra/persistent/Pulumi.yaml."""
    folder = tmp_path / "project"
    (folder / "infra" / "persistent").mkdir(parents=True)
    for name in ("Pulumi.yaml", "infra/persistent/Pulumi.yaml"):
        (folder / name).write_text((ROOT / name).read_text())
    (folder / "Pulumi.dev.yaml").write_text("encryptionsalt: v1:abc:def\n" + (ROOT / "Pulumi.dev.yaml").read_text())
    return folder


def test_the_persistent_stack_runs_its_own_program_with_the_lab_stacks_file(cli, settings, project):
    """Its own Pulumi project (infra/persistent/, project lab-persistent) and a stack of the same name, configured by
    the lab stack's file: copied beside its Pulumi.yaml, as Pulumi looks for Pulumi.<stack>.yaml there
    (sdk/go/common/workspace/paths.go DetectProjectStackPath), salt and all."""
    engine = pulumi_engine.AutomationEngine(settings, project).persistent()
    engine.up(pulumi_engine.RunChoices(), lambda line: None)
    engine.destroy(lambda line: None)
    for verb in ("up", "destroy"):
        call = next(c for c in cli.calls() if verb in c["argv"])
        assert call["cwd"] == str(project / "infra" / "persistent"), verb
        assert call["argv"][call["argv"].index("--stack") + 1] == "dev"
        assert "--target" not in call["argv"]
    copy = project / "infra" / "persistent" / "Pulumi.dev.yaml"
    assert copy.read_text() == (project / "Pulumi.dev.yaml").read_text()
    name = yaml.safe_load((project / "infra" / "persistent" / "Pulumi.yaml").read_text())["name"]
    assert name == pulumi_state.PERSISTENT_PROJECT


def test_a_kept_bucket_is_taken_in_by_pulumi_import_with_a_file(cli, settings, project):
    """`pulumi import --file` (import.go importSpec): the ArtifactBucket component as a placeholder and the bucket
    under it, so the URN is the one infra/persistent/ registers; no code generated, nothing protected."""
    engine = pulumi_engine.AutomationEngine(settings, project).persistent()
    engine.adopt(artifact_bucket.import_file("my-gcp-project-lab-dev"), lambda line: None)
    call = next(c for c in cli.calls() if "import" in c["argv"])
    assert call["cwd"] == str(project / "infra" / "persistent")
    assert "--generate-code=false" in call["argv"] and "--protect=false" in call["argv"]
    told = json.loads(call["file"])["resources"]
    assert told == [
        {"type": "lab:infra:ArtifactBucket", "name": "component", "logicalName": "artifacts", "component": True},
        {
            "type": "gcp:storage/bucket:Bucket",
            "name": "bucket",
            "logicalName": "artifacts",
            "id": "my-gcp-project-lab-dev",
            "parent": "component",
        },
    ]
