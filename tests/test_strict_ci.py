"""Under CI's LAB_REQUIRE_TEST_HOSTS=1 nothing but a `cloud` test may skip: a skip is a failure there, whether a
test skips itself or a whole module vanishes behind `importorskip` (a broken install)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBES = """
import pytest

def test_skips_itself():
    pytest.skip("no GPU here")

@pytest.mark.cloud
def test_needs_the_cloud():
    pytest.skip("needs the Pulumi CLI")

def test_passes():
    pass
"""
MISSING = """
import pytest

not_installed = pytest.importorskip("a_package_the_test_extra_forgot")


def test_x():
    pass
"""


def run_probes(folder: Path, source: str, strict: bool) -> str:
    """pytest on one probe module with the project's configuration and conftest; its output."""
    probe = folder / "test_probe.py"
    probe.write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "LAB_REQUIRE_TEST_HOSTS"}
    if strict:
        env["LAB_REQUIRE_TEST_HOSTS"] = "1"
    pytest = [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "-p", "tests.conftest"]
    ran = subprocess.run(
        [*pytest, "-q", "-rA", "-p", "no:cacheprovider", str(probe)],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return ran.stdout


def test_in_ci_a_skip_is_a_failure_but_a_cloud_test_may_skip(tmp_path):
    out = run_probes(tmp_path, PROBES, strict=True)
    assert out.strip().splitlines()[-1].startswith("1 failed, 1 passed, 1 skipped"), out
    assert "test_skips_itself skipped under LAB_REQUIRE_TEST_HOSTS=1, where nothing but `cloud` tests may skip" in out


def test_in_ci_a_module_that_cannot_import_what_it_needs_fails_the_run(tmp_path):
    out = run_probes(tmp_path, MISSING, strict=True)
    assert "test_probe.py skipped under LAB_REQUIRE_TEST_HOSTS=1" in out, out
    assert "a_package_the_test_extra_forgot" in out
    assert "1 error" in out.strip().splitlines()[-1]


def test_elsewhere_skips_stay_skips(tmp_path):
    assert run_probes(tmp_path, PROBES, strict=False).strip().splitlines()[-1].startswith("1 passed, 2 skipped")
    assert run_probes(tmp_path, MISSING, strict=False).strip().splitlines()[-1].startswith("1 skipped")
