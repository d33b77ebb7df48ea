"""`lab schedule down|list|remove`: entries written, listed and removed in a temporary crontab.

The CLI tests keep the crontab in a plain file (LAB_CRONTAB_FILE) that already holds someone else's
lines; one test installs into a real user's crontab with the real `crontab` program.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import LAB, ROOT
from toolkit.cli import crontab as schedule
from toolkit.errors import LabError

pytestmark = pytest.mark.slow  # starts labs or services: not in `pytest -m 'not slow'`

FOREIGN = (
    "MAILTO=me\n"
    "5 4 * * * /usr/bin/true # someone else\n"
    "# not lab's, though it looks like it:\n"
    "0 3 * * * /opt/lab/bin/lab down --stack dev --yes\n"
)
KMS = "gcpkms://projects/p/locations/global/keyRings/r/cryptoKeys/k"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with the shipped dev stack (gcp, passphrase), a local one and a gcp one with KMS."""
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(ROOT / "Pulumi.yaml", folder)
    # The shipped dev stack's GCP settings, as a gcp stack.
    dev = (ROOT / "Pulumi.dev.yaml").read_text().replace("lab:target: local", "lab:target: gcp")
    (folder / "Pulumi.dev.yaml").write_text(dev)
    (folder / "Pulumi.box.yaml").write_text("config:\n  lab:target: local\n")
    (folder / "Pulumi.kms.yaml").write_text(
        f"{dev}  lab:secretsProvider: {KMS}\n  lab:stateBackend: gs://my-lab-state\n"
    )
    monkeypatch.setenv("LAB_PROJECT_DIR", str(folder))
    return folder


@pytest.fixture
def passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "passphrase"
    path.write_text("correct horse battery staple\n")
    path.chmod(0o600)
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE_FILE", str(path))
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "s3cret-never-in-crontab")
    return path


@pytest.fixture
def crontab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "crontab"
    path.write_text(FOREIGN)
    monkeypatch.setenv("LAB_CRONTAB_FILE", str(path))
    return path


def lab_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line not in FOREIGN.splitlines()]


def one_line_error(ran, *needles: str, code: int = 1) -> None:
    assert ran.code == code, (ran.out, ran.err)
    assert len(ran.err.strip().splitlines()) == 1, ran.err
    assert ran.err.startswith("error: ")
    assert "Traceback" not in ran.err
    for needle in needles:
        assert needle in ran.err


def test_install_list_replace_remove(lab, project, passphrase, crontab, isolated):
    home = Path(os.environ["LAB_HOME"]).resolve()
    log = home / "stacks" / "dev" / "schedule-down.log"

    ran = lab("schedule", "down", "--at", "0 2 * * *")
    assert ran.code == 0, ran.err
    assert "scheduled `lab down --stack dev --yes` at '0 2 * * *'" in ran.out
    assert str(log) in ran.out
    text = crontab.read_text()
    assert text.startswith(FOREIGN)  # someone else's lines, untouched
    marker, line = text.removeprefix(FOREIGN).splitlines()
    assert marker == "# lab schedule: down stack=dev"
    assert line.startswith("0 2 * * * ")
    assert f"LAB_HOME={home} " in line
    assert f"LAB_PROJECT_DIR={project.resolve()} " in line
    assert f"PULUMI_CONFIG_PASSPHRASE_FILE={passphrase.resolve()} " in line
    assert line.endswith(f" {LAB.resolve()} down --stack dev --yes >> {log} 2>&1")
    assert "s3cret" not in text and "PULUMI_CONFIG_PASSPHRASE=" not in text
    assert log.parent.is_dir()  # the redirection has a folder to write to

    ran = lab("schedule", "down", "--at", "@hourly", "--stack", "box")
    assert ran.code == 0, ran.err
    ran = lab("schedule", "list", "--json")
    assert ran.code == 0, ran.err
    listed = json.loads(ran.out)
    assert [(e["stack"], e["when"]) for e in listed] == [("dev", "0 2 * * *"), ("box", "@hourly")]
    assert listed[0]["command"] == line.removeprefix("0 2 * * * ")
    assert listed[0]["runs"] == f"{LAB.resolve()} down --stack dev --yes"
    assert listed[0]["log"] == str(log)
    assert listed[1]["log"] == str(home / "stacks" / "box" / "schedule-down.log")
    ran = lab("schedule", "list")
    assert ran.code == 0, ran.err
    assert "scheduled teardowns" in ran.out
    for text_in_table in ("dev", "0 2 * * *", "box", "@hourly", "down --stack box --yes"):
        assert text_in_table in ran.out

    # A second `schedule down` for dev replaces its entry where it was, and says so.
    ran = lab("schedule", "down", "--at", "30 19  * * mon-fri")
    assert ran.code == 0, ran.err
    assert "replaced the scheduled teardown of stack dev (it was at '0 2 * * *')" in ran.out
    text = crontab.read_text()
    assert text.startswith(FOREIGN)
    mine = lab_lines(text)
    assert mine[0] == "# lab schedule: down stack=dev"
    assert mine[1].startswith("30 19 * * mon-fri ")
    assert mine[2] == "# lab schedule: down stack=box"
    assert mine[3].startswith("@hourly ")
    assert len(mine) == 4

    ran = lab("schedule", "remove")
    assert ran.code == 0, ran.err
    assert "removed the scheduled teardown of stack dev (at '30 19 * * mon-fri')" in ran.out
    assert crontab.read_text() == FOREIGN + "\n".join(mine[2:]) + "\n"

    ran = lab("schedule", "remove", "--all")
    assert ran.code == 0, ran.err
    assert "removed the scheduled teardown of stack box" in ran.out
    assert crontab.read_text() == FOREIGN

    ran = lab("schedule", "remove", "--stack", "box")
    assert ran.code == 0, ran.err
    assert ran.out.strip() == "nothing to remove: no scheduled teardown of stack box"
    assert crontab.read_text() == FOREIGN
    ran = lab("schedule", "list")
    assert (ran.code, ran.out.strip()) == (0, "no scheduled teardown")
    ran = lab("schedule", "list", "--json")
    assert (ran.code, json.loads(ran.out)) == (0, [])


def test_the_entry_runs_lab_down_in_crons_bare_environment(lab, project, crontab, isolated):
    """The installed line, given to sh as cron does (bare environment), runs `lab down` and logs it."""
    ran = lab("schedule", "down", "--at", "@daily", "--stack", "box")
    assert ran.code == 0, ran.err
    line = lab_lines(crontab.read_text())[1]
    command = line.removeprefix("@daily ").replace("\\%", "%")
    bare = {"HOME": str(isolated), "LOGNAME": "lab", "SHELL": "/bin/sh", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(["/bin/sh", "-c", command], env=bare, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == done.stderr == ""  # everything went to the log
    log = Path(os.environ["LAB_HOME"]) / "stacks" / "box" / "schedule-down.log"
    assert "nothing to do: the lab is not running" in log.read_text()


@pytest.mark.parametrize(
    "expression",
    [
        *("0 25 * * *", "0 2 * *", "0 2 * * * *", "@reboot", "@Daily", "5/10 * * * *", "0 2 * * mon-", "0 2 0 * *"),
        *("L", "ten minutes ago"),
    ],
)
def test_a_bad_cron_expression_is_one_line(lab, project, passphrase, crontab, expression):
    ran = lab("schedule", "down", "--at", expression)
    one_line_error(ran, repr(expression), '"0 2 * * *"', code=2)  # a bad value: a usage error
    assert crontab.read_text() == FOREIGN


def test_cron_grammar():
    good = ["0 2 * * *", "*/15 1-5/2 1,15 jan-MAR mon-fri", "0 0 * * 7", "01 02 * * sun", "@daily", " 0  2 * * * "]
    for expression in good:
        assert schedule.validate_when(expression) == " ".join(expression.split())
    assert schedule.github_cron("@daily") == "0 0 * * *"
    assert schedule.github_cron("@weekly") == "0 0 * * 0"
    for expression in ["0 5-1 * * *", "*/0 * * * *", "0 2 * * sunday", "? * * * *", "0 2 * 13 *", "0 2 * * 1,"]:
        with pytest.raises(LabError):
            schedule.validate_when(expression)


def test_print_shows_the_entry_and_a_workflow_and_installs_nothing(lab, project, crontab):
    ran = lab("schedule", "down", "--at", "@daily", "--print")
    assert ran.code == 0, ran.err
    assert crontab.read_text() == FOREIGN
    assert not (Path(os.environ["LAB_HOME"]) / "stacks" / "dev").exists()
    lines = ran.out.splitlines()
    marker = lines.index("# lab schedule: down stack=dev")
    assert lines[marker + 1].startswith("@daily LAB_HOME=")
    assert lines[marker + 1].endswith(
        "down --stack dev --yes >> "
        + str(Path(os.environ["LAB_HOME"]).resolve() / "stacks/dev/schedule-down.log")
        + " 2>&1"
    )
    # No passphrase file here: the output says the passphrase must come from one.
    assert any(line.startswith("# NOTE: set PULUMI_CONFIG_PASSPHRASE_FILE") for line in lines)
    workflow = yaml.safe_load("\n".join(lines[marker + 2 :]))
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert triggers["schedule"] == [{"cron": "0 0 * * *"}]
    steps = workflow["jobs"]["down"]["steps"]
    uses = [s.get("uses", "") for s in steps]
    assert uses[0].startswith("actions/checkout@") and uses[1].startswith("actions/setup-python@")
    auth = next(s for s in steps if s.get("uses", "").startswith("google-github-actions/auth@"))
    assert set(auth["with"]) == {"workload_identity_provider", "service_account"}
    down = steps[-1]
    assert down["run"] == "lab down --stack dev --yes"
    assert down["env"] == {"PULUMI_CONFIG_PASSPHRASE": "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"}
    # A hosted runner cannot SSH to a gcp tracker, and need not: the tracker backs itself up as it stops.
    assert not any("LAB_SSH_KEY" in str(step) for step in steps)
    assert "# The runner needs no SSH to the tracker" in ran.out
    assert any("pip install" in s.get("run", "") for s in steps)
    assert "NOTE: lab:stateBackend is file://" in ran.out  # a runner cannot see this machine's state


def test_print_with_kms_needs_no_passphrase(lab, project, crontab):
    ran = lab("schedule", "down", "--at", "0 20 * * 1-5", "--stack", "kms", "--print")
    assert ran.code == 0, ran.err
    assert "PULUMI_CONFIG_PASSPHRASE" not in ran.out
    assert "stateBackend" not in ran.out
    assert "- cron: '0 20 * * 1-5'" in ran.out
    assert crontab.read_text() == FOREIGN


def test_print_names_the_least_the_runners_identity_needs(lab, project, crontab):
    """Breakage 8 (issue 24): the printed workflow says which grants the runner's service account needs, bound where
    (toolkit.gcp.ci_identity; checked through the GCS-with-IAM stand-in in tests/gcp/test_gcs_iam.py)."""
    from toolkit.gcp import ci_identity

    ran = lab("schedule", "down", "--at", "0 20 * * 1-5", "--stack", "kms", "--print")
    assert ran.code == 0, ran.err
    commands = [line.removeprefix("#   ") for line in ran.out.splitlines() if line.startswith("#   gcloud ")]
    assert commands[:2] == [
        "gcloud iam roles create labTeardown --project my-gcp-project --title 'lab teardown' --permissions "
        + ",".join(ci_identity.PROJECT_PERMISSIONS),
        "gcloud iam roles create labBucketPolicy --project my-gcp-project --title 'lab bucket policy' --permissions "
        "storage.buckets.getIamPolicy,storage.buckets.setIamPolicy",
    ]
    member = "--member serviceAccount:SA_EMAIL"
    assert commands[2] == (
        f"gcloud storage buckets add-iam-policy-binding gs://my-lab-state {member} --role roles/storage.objectUser"
    )
    assert commands[3].endswith(
        "--role roles/storage.objectViewer --condition='^;^title=lab kms backups;expression="
        + ci_identity.backups_condition(commands[3].split()[4].removeprefix("gs://"), "kms")
        + "'"
    )
    assert commands[5] == (
        f"gcloud projects add-iam-policy-binding my-gcp-project {member} "
        "--role projects/my-gcp-project/roles/labTeardown"
    )
    assert not any("roles/owner" in c or "roles/editor" in c or "roles/storage.admin" in c for c in commands)


def test_no_passphrase_file_means_no_entry(lab, project, crontab, monkeypatch):
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "s3cret-never-in-crontab")
    ran = lab("schedule", "down", "--at", "0 2 * * *")
    one_line_error(ran, "PULUMI_CONFIG_PASSPHRASE_FILE", "never written into a crontab")
    assert crontab.read_text() == FOREIGN
    # A KMS secrets provider needs no passphrase at all.
    ran = lab("schedule", "down", "--at", "0 2 * * *", "--stack", "kms")
    assert ran.code == 0, ran.err
    assert "PULUMI_CONFIG_PASSPHRASE" not in crontab.read_text()
    assert lab_lines(crontab.read_text())[0] == "# lab schedule: down stack=kms"


def test_a_missing_passphrase_file_is_one_line(lab, project, crontab, tmp_path):
    ran = lab("schedule", "down", "--at", "0 2 * * *", env={"PULUMI_CONFIG_PASSPHRASE_FILE": str(tmp_path / "nope")})
    one_line_error(ran, "PULUMI_CONFIG_PASSPHRASE_FILE=", "is not a file")
    assert crontab.read_text() == FOREIGN


def test_invalid_or_missing_stack_is_one_line(lab, project, passphrase, crontab):
    broken = ROOT / "tests" / "data" / "Pulumi.broken.yaml"
    one_line_error(lab("schedule", "down", "--at", "0 2 * * *", "--stack", str(broken)), "Pulumi.broken.yaml")
    one_line_error(lab("schedule", "down", "--at", "0 2 * * *", "--stack", "nosuch"), "no stack file")
    assert crontab.read_text() == FOREIGN


def test_a_stack_file_outside_the_project_is_named_by_path(lab, project, passphrase, crontab, tmp_path):
    elsewhere = tmp_path / "elsewhere" / "Pulumi.far.yaml"
    elsewhere.parent.mkdir()
    elsewhere.write_text("config:\n  lab:target: local\n")
    ran = lab("schedule", "down", "--at", "0 2 * * *", "--stack", str(elsewhere))
    assert ran.code == 0, ran.err
    marker, line = lab_lines(crontab.read_text())
    assert marker == "# lab schedule: down stack=far"
    assert f"down --stack {elsewhere.resolve()} --yes" in line
    ran = lab("schedule", "remove", "--stack", str(elsewhere))
    assert ran.code == 0 and "removed the scheduled teardown of stack far" in ran.out
    assert crontab.read_text() == FOREIGN


def test_a_percent_sign_is_escaped_for_cron(lab, project, crontab, monkeypatch, tmp_path):
    home = tmp_path / "lab 100%"
    home.mkdir()
    monkeypatch.setenv("LAB_HOME", str(home))
    ran = lab("schedule", "down", "--at", "0 2 * * *", "--stack", "box")
    assert ran.code == 0, ran.err
    line = lab_lines(crontab.read_text())[1]
    assert "100\\%" in line and "100%" not in line.replace("100\\%", "")
    listed = json.loads(lab("schedule", "list", "--json").out)
    assert listed[0]["log"] == str(home.resolve() / "stacks" / "box" / "schedule-down.log")


def test_an_orphaned_marker_is_lab_s_and_foreign_lines_are_not(crontab):
    """A marker whose entry someone deleted is replaced on install; the line under it is never taken."""
    crontab.write_text(FOREIGN + "# lab schedule: down stack=box\nMAILTO=other\n")
    table = schedule.Crontab.here()
    assert schedule.entries(table) == []
    entry = schedule.Entry("box", "@daily", "/bin/true", None)
    assert schedule.install(table, entry) is None
    assert crontab.read_text() == FOREIGN + "# lab schedule: down stack=box\n@daily /bin/true\nMAILTO=other\n"
    assert [e.stack for e in schedule.remove(table, None)] == ["box"]
    assert crontab.read_text() == FOREIGN + "MAILTO=other\n"


def _can_use_real_crontab() -> str | None:
    if shutil.which("crontab") is None:
        return "no `crontab` on this machine (the Debian package cron)"
    if os.geteuid() != 0:
        return "needs root to make a throwaway user and edit its crontab (crontab -u)"
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        return "no useradd/userdel to make a throwaway user"
    return None


@pytest.mark.skipif(_can_use_real_crontab() is not None, reason=_can_use_real_crontab() or "")
def test_a_real_crontab(project, passphrase, monkeypatch, tmp_path):
    """The real `crontab` for a throwaway user: empty at first, foreign lines kept, cron accepts lab's line."""
    monkeypatch.delenv("LAB_CRONTAB_FILE", raising=False)
    home = tmp_path / "lab 50%"
    home.mkdir()
    monkeypatch.setenv("LAB_HOME", str(home))
    user = f"labct{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", user], check=True)
    table = schedule.Crontab(user=user)

    def listed() -> str:
        return subprocess.run(
            ["crontab", "-u", user, "-l"], capture_output=True, text=True, check=True, timeout=30
        ).stdout

    try:
        assert table.read() == ""  # "no crontab for USER" is an empty one
        assert schedule.entries(table) == []
        assert schedule.remove(table, "dev") == []
        subprocess.run(["crontab", "-u", user, "-"], input=FOREIGN, text=True, check=True, timeout=30)

        plan = schedule.plan_down("dev", "*/15 1-5/2 1,15 jan-mar mon-fri")
        assert schedule.install(table, plan.entry) is None  # `crontab -` refuses a line cron cannot read
        text = listed()
        assert text.startswith(FOREIGN)
        assert "\\%" in lab_lines(text)[1]
        [found] = schedule.entries(table)
        assert found == plan.entry
        assert found.log == str(home.resolve() / "stacks" / "dev" / "schedule-down.log")

        again = schedule.plan_down("dev", "@daily")
        assert schedule.install(table, again.entry) == plan.entry
        assert schedule.entries(table) == [again.entry]
        assert schedule.remove(table, "dev") == [again.entry]
        assert listed() == FOREIGN
    finally:
        subprocess.run(["crontab", "-u", user, "-r"], capture_output=True, check=False, timeout=30)
        subprocess.run(["userdel", user], capture_output=True, check=False, timeout=30)
