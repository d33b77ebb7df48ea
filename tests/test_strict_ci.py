"""Under CI's LAB_REQUIRE_TEST_HOSTS=1 nothing but a `cloud` test may skip: a skip is a failure there, whether a
test skips itself, a whole module vanishes behind `importorskip` (a broken install), or a whole folder does behind
its conftest.py's. No test may xfail there either: an xfail, marked or `pytest.xfail()`, and an XPASS fail the run."""

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


# A folder's conftest.py that cannot import what it needs skips the whole folder while pytest collects it.
HIDDEN_FOLDER = {
    "needs_a_module/conftest.py": 'import pytest\n\npytest.importorskip("no_such_module")\n',
    "needs_a_module/test_hidden.py": "def test_hidden():\n    pass\n",
    "test_probe.py": "def test_passes():\n    pass\n",
}
XFAILS = """
import pytest

@pytest.mark.xfail(reason="known bug 42")
def test_marked_and_failing():
    assert False

def test_calls_xfail():
    pytest.xfail("not supported yet")

@pytest.mark.xfail(reason="fixed already", strict=False)
def test_passes_unexpectedly():
    pass

@pytest.mark.xfail(reason="strict by the project's xfail_strict")
def test_marked_but_passes():
    pass

def test_passes():
    pass
"""


def run_probes(
    folder: Path, probes: str | dict[str, str], strict: bool, *options: str
) -> subprocess.CompletedProcess[str]:
    """pytest on a folder of probes (one module's source, or {relative path: source}) with the project's
    configuration and conftest, and `options` (`-p xdist -n 2`)."""
    for name, source in ({"test_probe.py": probes} if isinstance(probes, str) else probes).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "LAB_REQUIRE_TEST_HOSTS"}
    if strict:
        env["LAB_REQUIRE_TEST_HOSTS"] = "1"
    pytest = [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "-p", "tests.conftest"]
    return subprocess.run(
        [*pytest, "-q", "-rA", "-p", "no:cacheprovider", *options, str(folder)],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def summary(ran: subprocess.CompletedProcess[str]) -> str:
    return ran.stdout.strip().splitlines()[-1]


def test_in_ci_a_skip_is_a_failure_but_a_cloud_test_may_skip(tmp_path):
    out = run_probes(tmp_path, PROBES, strict=True).stdout
    assert out.strip().splitlines()[-1].startswith("1 failed, 1 passed, 1 skipped"), out
    assert "test_skips_itself skipped under LAB_REQUIRE_TEST_HOSTS=1, where nothing but `cloud` tests may skip" in out


def test_in_ci_a_module_that_cannot_import_what_it_needs_fails_the_run(tmp_path):
    out = run_probes(tmp_path, MISSING, strict=True).stdout
    assert "test_probe.py skipped under LAB_REQUIRE_TEST_HOSTS=1" in out, out
    assert "a_package_the_test_extra_forgot" in out
    assert "1 error" in out.strip().splitlines()[-1]


def test_in_ci_a_folder_whose_conftest_cannot_import_what_it_needs_fails_the_run(tmp_path):
    ran = run_probes(tmp_path, HIDDEN_FOLDER, strict=True)
    assert ran.returncode != 0, ran.stdout
    assert "1 error" in summary(ran), ran.stdout
    reason = next(line for line in ran.stdout.splitlines() if "skipped under LAB_REQUIRE_TEST_HOSTS=1" in line)
    assert "needs_a_module/conftest.py:3" in reason, reason
    assert "may skip: could not import 'no_such_module'" in reason, reason


def test_in_ci_any_xfail_is_a_failure(tmp_path):
    ran = run_probes(tmp_path, XFAILS, strict=True)
    assert ran.returncode != 0
    assert summary(ran).startswith("4 failed, 1 passed"), ran.stdout
    out = ran.stdout
    for name in ("test_marked_and_failing", "test_calls_xfail", "test_passes_unexpectedly", "test_marked_but_passes"):
        assert f"FAILED test_probe.py::{name} - " in out, out
    assert "xfailed under LAB_REQUIRE_TEST_HOSTS=1, where no test may xfail: known bug 42" in out
    assert "assert False" in out, "the marked test's own failure is shown too"
    assert "xfailed under LAB_REQUIRE_TEST_HOSTS=1, where no test may xfail: not supported yet" in out
    assert "passed unexpectedly (XPASS) under LAB_REQUIRE_TEST_HOSTS=1, where no test may xfail: fixed already" in out
    assert "[XPASS(strict)] strict by the project's xfail_strict" in out


def test_elsewhere_skips_stay_skips(tmp_path):
    assert summary(run_probes(tmp_path / "probes", PROBES, strict=False)).startswith("1 passed, 2 skipped")
    assert summary(run_probes(tmp_path / "missing", MISSING, strict=False)).startswith("1 skipped")
    folder = run_probes(tmp_path / "folder", HIDDEN_FOLDER, strict=False)
    assert folder.returncode == 0 and summary(folder).startswith("1 passed, 1 skipped"), folder.stdout


def test_elsewhere_an_xfail_is_an_xfail_but_the_project_makes_an_xpass_of_a_mark_fail(tmp_path):
    ran = run_probes(tmp_path, XFAILS, strict=False)
    assert summary(ran).startswith("1 failed, 1 passed, 2 xfailed, 1 xpassed"), ran.stdout
    assert "FAILED" in ran.stdout and "test_marked_but_passes" in ran.stdout
