"""lab-firewall-guard (the lab_tracker role's script) against the real nft, in a network namespace of its own
(the machine's firewall is never touched), with the role's own firewall template. systemd cannot run here, so
the watch's `systemctl` is a stand-in that records its calls and, for `reload lab-firewall.service`, does what
the unit's ExecReload does (`nft -f` the rules), or fails as a reload of a broken file would. The real units
are tested on VM-like hosts (tests/labs/ssh/test_ssh_target.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROLE = Path(__file__).resolve().parents[2] / "playbooks/roles/lab_tracker"
GUARD = ROLE / "files/lab-firewall-guard.py"
PORT = 5000

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("unshare"),
    reason="needs root, nft and unshare (a network namespace of its own)",
)


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    """The role's firewall.nft, rendered for two workers."""
    import jinja2

    template = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False).from_string(  # noqa: S701 -- nft, not HTML
        (ROLE / "templates/firewall.nft.j2").read_text()
    )
    path = tmp_path / "firewall.nft"
    path.write_text(
        template.render(
            ansible_managed="test",
            lab_tracker_firewall_extra_sources=[],
            lab_tracker_mlflow_clients=["10.1.0.12", "10.1.0.13"],
            lab_tracker_mlflow_port=PORT,
            lab_tracker_optuna_port=5001,
            lab_tracker_dashboard_port=8080,
        )
    )
    return path


def in_namespace(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["unshare", "--net", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def check(port: int = PORT) -> str:
    return f"{sys.executable} {GUARD} --check --port {port}"


def test_the_roles_rules_pass_the_check(rules):
    ran = in_namespace(f"nft -f {rules} && {check()}")
    assert ran.returncode == 0, ran.stderr


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        ("nft delete table inet lab", "the table inet lab is not loaded"),
        ("nft flush ruleset", "the table inet lab is not loaded"),  # another firewall's reload
        ("nft flush chain inet lab input", "does not drop others' connections to port 5000"),
        ("nft delete chain inet lab input", "has no input chain"),
    ],
)
def test_a_damaged_table_fails_the_check(rules, damage, why):
    ran = in_namespace(f"nft -f {rules} && {damage} && {check()}")
    assert ran.returncode == 1 and why in ran.stderr, ran.stderr


def test_a_drop_that_depends_on_the_source_is_not_enough(rules):
    narrowed = (
        "nft flush chain inet lab input && "
        f"nft add rule inet lab input ip saddr 10.9.9.9 tcp dport {PORT} drop"  # others are let in
    )
    ran = in_namespace(f"nft -f {rules} && {narrowed} && {check()}")
    assert ran.returncode == 1, ran.stderr
    assert in_namespace(f"nft -f {rules} && {check(5002)}").returncode == 1  # another port than MLflow's


@pytest.fixture
def systemctl(tmp_path: Path, rules: Path) -> tuple[Path, Path]:
    """A stand-in `systemctl` on PATH: records each call; `reload` runs the unit's ExecReload (nft -f the rules)
    unless RELOAD_FAILS is set."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    fake = bin_dir / "systemctl"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {calls}\n'
        'if [ "$1" = reload ]; then\n'
        '  [ -z "$RELOAD_FAILS" ] || { echo "Job for lab-firewall.service failed." >&2; exit 1; }\n'
        f"  exec nft -f {rules}\n"
        "fi\n"
    )
    fake.chmod(0o755)
    return bin_dir, calls


def watch(bin_dir: Path, rules: Path, damage: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Load the rules, damage them, then let the guard watch for 3 s."""
    script = f"nft -f {rules} && {damage} && timeout 3 {sys.executable} {GUARD} --port {PORT} --interval 0.2; {check()}"
    return in_namespace(script, {"PATH": f"{bin_dir}:{os.environ['PATH']}", **(env or {})})


def test_the_guard_restores_a_deleted_table(systemctl, rules):
    bin_dir, calls = systemctl
    ran = watch(bin_dir, rules, "nft delete table inet lab")
    assert ran.returncode == 0, ran.stderr  # the final check: the table is back
    assert calls.read_text().splitlines() == ["reload lab-firewall.service"]
    assert "the table inet lab is not loaded: restored the lab's rules" in ran.stderr


def test_the_guard_stops_mlflow_when_it_cannot_restore(systemctl, rules):
    bin_dir, calls = systemctl
    ran = watch(bin_dir, rules, "nft flush ruleset", {"RELOAD_FAILS": "1"})
    assert ran.returncode == 1  # still open: so MLflow was stopped
    said = calls.read_text().splitlines()
    assert said[:2] == ["reload lab-firewall.service", "--no-block stop lab-mlflow.service"], said
    assert "stopping lab-mlflow.service: the table inet lab is not loaded" in ran.stderr
    assert "Job for lab-firewall.service failed." in ran.stderr
