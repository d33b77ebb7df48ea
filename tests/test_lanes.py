"""The suite's parallel lanes (pytest-xdist, `--dist loadgroup`, lanes assigned by tests/conftest.py::lane_of) hold
what they promise, on probes run with the project's configuration and conftest under `-n 3`: the `serial` tests (and
every test of the host pool) run in one worker, in file order; a module's module-scoped fixture starts once, its
tests in one worker; every test has its own short TMPDIR, HOME and LAB_HOME. With a pytest that xdist cannot name
by group (9.2 and xdist 3.8), the first of these fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each probe writes where it ran (its worker, its TMPDIR, HOME and LAB_HOME) to $LANE_LOG/<test>.json.
RECORDER = """
import json, os, tempfile, time
from pathlib import Path


def record(name, **extra):
    seen = {"worker": os.environ.get("PYTEST_XDIST_WORKER"), "tmp": tempfile.gettempdir(),
            "env_tmp": os.environ["TMPDIR"], "home": os.environ["HOME"], "lab_home": os.environ["LAB_HOME"],
            "at": time.monotonic(), **extra}
    (Path(os.environ["LANE_LOG"]) / f"{name}.json").write_text(json.dumps(seen))
"""
SERIAL = """
import time

import pytest

from recorder import record

pytestmark = pytest.mark.serial


def test_serial_1():
    record("serial_1")
    time.sleep(0.3)


def test_serial_2():
    record("serial_2")
    time.sleep(0.3)


def test_serial_3():
    record("serial_3")
"""
MODULE = """
import os
from pathlib import Path

import pytest

from recorder import record


@pytest.fixture(scope="module")
def shared():
    starts = Path(os.environ["LANE_LOG"]) / "module_fixture_starts"
    starts.write_text(starts.read_text() + "x" if starts.exists() else "x")
    return "shared"


@pytest.mark.parametrize("n", range(6))
def test_uses_the_module_fixture(shared, n):
    record(f"module_{n}")
"""
LOOSE = """
import pytest

from recorder import record


@pytest.mark.parametrize("n", range(6))
def test_loose(n):
    record(f"loose_{n}")
"""


def run_lanes(folder: Path) -> dict[str, dict]:
    (folder / "recorder.py").write_text(RECORDER)
    (folder / "test_a_serial.py").write_text(SERIAL)
    (folder / "test_b_module.py").write_text(MODULE)
    (folder / "test_c_loose.py").write_text(LOOSE)
    log = folder / "log"
    log.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "LAB_REQUIRE_TEST_HOSTS"}
    env.update(LANE_LOG=str(log), PYTHONPATH=f"{ROOT}{os.pathsep}{folder}")
    pytest = [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "-p", "tests.conftest"]
    ran = subprocess.run(
        [*pytest, "-q", "-p", "no:cacheprovider", "-n", "3", str(folder)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    seen = {path.stem: json.loads(path.read_text()) for path in log.glob("*.json")}
    seen["module_fixture_starts"] = {"count": len((log / "module_fixture_starts").read_text())}
    return seen


def test_serial_tests_share_one_lane_in_file_order_and_a_module_fixture_starts_once(tmp_path):
    seen = run_lanes(tmp_path)
    serial = [seen[f"serial_{n}"] for n in (1, 2, 3)]
    assert all(s["worker"] and s["worker"].startswith("gw") for s in serial), serial
    assert len({s["worker"] for s in serial}) == 1, f"the serial tests ran in several lanes: {serial}"
    assert [s["at"] for s in serial] == sorted(s["at"] for s in serial), "not in file order"

    module = [seen[f"module_{n}"] for n in range(6)]
    assert len({m["worker"] for m in module}) == 1, f"a module's shared fixture was split over lanes: {module}"
    assert seen["module_fixture_starts"]["count"] == 1

    everyone = [s for name, s in seen.items() if name != "module_fixture_starts"]
    assert len({s["worker"] for s in everyone}) >= 2, "three lanes, and only one ran anything"
    for field in ("tmp", "home", "lab_home"):
        assert len({s[field] for s in everyone}) == len(everyone), f"two tests shared a {field}"
    for s in everyone:
        assert s["tmp"] == s["env_tmp"] and s["tmp"].startswith("/tmp/lt-") and len(s["tmp"]) < 20, s
