"""Isolation for every test: its own LAB_HOME and HOME, no stack or credentials from the machine."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hosts.fixtures import (  # noqa: F401  (VM-like hosts, any test folder)
    FIRST_LANE_MODULE,
    host_pool,
    second_lane,
    second_session_pool,
    session_pool,
    tracker_host,
    worker_hosts,
)

ROOT = Path(__file__).resolve().parents[1]
LAB = Path(sys.executable).with_name("lab")


def sigint_default() -> None:
    """Popen(preexec_fn=sigint_default) for a `lab` a test interrupts: a test run started in the background
    (`cmd &` in a script) ignores SIGINT and its children inherit that, so Ctrl-C would never reach them."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def sigint_ignore() -> None:
    """Popen(preexec_fn=sigint_ignore): a `lab` started as a shell's background job or a cron job is, with SIGINT
    ignored (and what it starts inherits that)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# The machine's own environment, before `isolated` hides it: only `cloud` tests may look at it.
MACHINE_ENV = dict(os.environ)
# CI sets this: it can run everything but the `cloud` tests, so any other skip there is a failure (a broken
# install would otherwise make whole modules, or whole folders behind a conftest's `importorskip`, vanish while CI
# stays green), and so is any xfail (a test that is known to fail, or passes unexpectedly, is not a passing test).
STRICT_ENV = "LAB_REQUIRE_TEST_HOSTS"


def _strict() -> bool:
    return os.environ.get(STRICT_ENV) == "1"


def _as_failure(report: pytest.CollectReport | pytest.TestReport, where: str) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")  # a folder's skip (its conftest's) comes with the exception's name
    report.outcome = "failed"
    report.longrepr = f"{where} skipped under {STRICT_ENV}=1, where nothing but `cloud` tests may skip: {reason}"


def _xfail_as_failure(report: pytest.TestReport, call: pytest.CallInfo) -> None:
    """An xfail (marked and failing, `pytest.xfail()`, or an XPASS of a non-strict mark) as a failure; a marked
    test's own failure stays below the line that says why it fails the run."""
    reason = report.wasxfail or "no reason given"
    if report.passed:
        what, details = "passed unexpectedly (XPASS)", ""
    else:
        imperative = call.excinfo is not None and call.excinfo.errisinstance(pytest.xfail.Exception)
        what = "xfailed"
        details = "" if imperative or report.longrepr is None or isinstance(report.longrepr, tuple) else report.longrepr
    del report.wasxfail  # a failed report with `wasxfail` would read as an xfail to reporters (junitxml)
    report.outcome = "failed"
    report.longrepr = f"{what} under {STRICT_ENV}=1, where no test may xfail: {reason}"
    if details:
        report.longrepr += f"\n{details}"


def _collector_name(collector: pytest.Collector, report: pytest.CollectReport) -> str:
    """A skipped collector as its failure names it: a folder (Dir, Package) also by the file whose skip hid all of
    it, its conftest.py with the line (conftests load while their folder is collected)."""
    where = collector.nodeid or str(collector.path)
    if isinstance(collector, pytest.Module) or not isinstance(report.longrepr, tuple):
        return where
    raised, line, _ = report.longrepr
    path = Path(raised)
    if path.is_relative_to(collector.config.rootpath):
        path = path.relative_to(collector.config.rootpath)
    return f"{where} (all of it, by {path}:{line})"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    report = outcome.get_result()
    if _strict() and report.skipped:
        _as_failure(report, _collector_name(collector, report))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if not _strict():
        return
    if hasattr(report, "wasxfail"):
        _xfail_as_failure(report, call)
    elif report.skipped and item.get_closest_marker("cloud") is None:
        _as_failure(report, item.nodeid)


UNSET_FOR_TESTS = (
    "LAB_STACK",
    "LAB_PROJECT_DIR",
    "LAB_DEBUG",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "PULUMI_CONFIG",
    "PULUMI_ACCESS_TOKEN",
)


def home_env(home: Path, tmp: Path) -> dict[str, str]:
    """The variables that make `home` a test's (or a module lab's) whole world: HOME, LAB_HOME, gcloud's folder and
    a temporary folder of its own."""
    return {
        "HOME": str(home),
        "LAB_HOME": str(home / ".lab"),
        "CLOUDSDK_CONFIG": str(home / "gcloud"),
        "TMPDIR": str(tmp),
    }


def short_tmp() -> Path:
    """A private temporary folder with a short path (/tmp/lt-XXXXXXXX): ssh's ControlMaster sockets and Litestream's
    socket live there, and a socket path must fit in 108 bytes (pytest's own temporary paths do not)."""
    return Path(tempfile.mkdtemp(prefix="lt-", dir="/tmp"))


def close_ssh_masters(tmp: Path) -> None:
    """End the ControlMaster connections opened under `tmp` (ControlPersist would keep them for 30 s more)."""
    for socket_path in tmp.glob("lab-ssh-*/*"):
        subprocess.run(
            ["ssh", "-F", "/dev/null", "-o", f"ControlPath={socket_path}", "-O", "exit", "lab-test"],
            capture_output=True,
            timeout=10,
            check=False,
        )


@contextlib.contextmanager
def own_tmp() -> Iterator[Path]:
    """A short temporary folder for the length of the block; its SSH masters closed and the folder removed after."""
    tmp = short_tmp()
    try:
        yield tmp
    finally:
        close_ssh_masters(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A module's own short TMPDIR, for what its module-scoped fixtures start (a lab on the test hosts, its SSH
    connections): nothing of one module is reused by the next. Each test gets its own inside (`isolated`)."""
    tmp_path_factory.getbasetemp()  # pytest's own folder is found once, in the machine's TMPDIR: not in this one
    with own_tmp() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(tmp))
        patch.setattr(tempfile, "tempdir", str(tmp))
        yield tmp


@pytest.fixture(autouse=True)
def isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test's own HOME and LAB_HOME, no stack or credentials from the machine, and its own short TMPDIR, so
    that no SSH connection (ControlMaster socket) or other socket outlives the test into the next one."""
    home = tmp_path_factory.mktemp("home")
    (home / ".lab").mkdir()
    with own_tmp() as tmp:
        for name, value in home_env(home, tmp).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # gettempdir() caches what it found first
        for name in UNSET_FOR_TESTS:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.chdir(ROOT)
        yield home


@dataclass
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture
def lab():
    """Run the installed `lab` console script as a user would, in this test's environment."""

    def run(
        *args: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 180,  # a guard against a hang: a `lab up` on a loaded machine takes a minute
        sigint_ignored: bool = False,
    ) -> Ran:
        merged = {**os.environ, "COLUMNS": "200", **(env or {})}
        done = subprocess.run(
            [str(LAB), *args],
            capture_output=True,
            text=True,
            env=merged,
            cwd=cwd,
            timeout=timeout,
            check=False,
            preexec_fn=sigint_ignore if sigint_ignored else None,
        )
        return Ran(done.returncode, done.stdout, done.stderr)

    return run


def wait_past(moment: dt.datetime) -> None:
    """Until this machine's clock (the one Litestream, the backups and the test hosts date things by) reads later than
    `moment`: exactly as long as that takes. `moment` comes from a state already written, so it is at most a second
    or so ahead."""
    left = (moment - dt.datetime.now(dt.timezone.utc)).total_seconds()
    assert left < 5, f"{moment.isoformat()} is {left:.1f} s ahead of this machine's clock"
    while left >= 0:
        time.sleep(left)
        left = (moment - dt.datetime.now(dt.timezone.utc)).total_seconds()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serving(argv: list[str], port: int, name: str) -> Iterator[str]:
    """A local server (`argv`, listening on `port`) for the length of a fixture: its http:// URL once it accepts
    connections; stopped after."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert process.poll() is None, f"{name} exited"
            assert time.monotonic() < deadline, f"{name} did not start"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    """gcp-storage-emulator (in memory) on a free port, for the real google-cloud-storage client."""
    port = free_port()
    emulator_bin = Path(sys.executable).with_name("gcp-storage-emulator")
    argv = [str(emulator_bin), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"]
    yield from serving(argv, port, "the emulator")


@pytest.fixture
def disk_events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """What reaches the disk and when a backup is verified, in order: ("fsync", path) for every os.fsync (the real
    one still runs) and ("verify", folder) for every backups.verify."""
    from toolkit.tracker import backups

    events: list[tuple[str, str]] = []
    real_fsync, real_verify = os.fsync, backups.verify

    def fsync(fd: int) -> None:
        events.append(("fsync", str(Path(f"/proc/self/fd/{fd}").readlink())))
        real_fsync(fd)

    def verify(folder: Path, *check: str) -> backups.Manifest:
        events.append(("verify", str(folder)))
        return real_verify(folder, *check)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(backups, "verify", verify)
    return events


# Parallel lanes (pytest-xdist, `-n N --dist loadgroup`): a work unit is an `xdist_group`, run by one worker in file
# order. The tests of the VM-like host pools are two lanes, each with a pool of its own (tests/hosts/fixtures.py):
# `hosts` holds the ssh target's module (first: it resets its hosts), the remote replica's and the harness's own
# tests; `hosts2` every other module of the host pool. The tests marked `serial` (timing bounds, the crash tests'
# durability promise) are one lane, one at a time. Every other module is a unit of its own: its module-scoped
# fixtures (a shared lab, an emulator, its TMPDIR) start once, and its tests run in order in one worker.
HOST_LANE = "hosts"
SECOND_HOST_LANE = "hosts2"
SERIAL_LANE = "serial"
HOST_FIXTURES = frozenset({"session_pool", "second_session_pool", "host_pool", "tracker_host", "worker_hosts"})
HOST_HARNESS = ROOT / "tests" / "hosts"
# A test that asks for one of these is `slow` without saying so: test hosts, or a local lab started for it.
SLOW_FIXTURES = HOST_FIXTURES | {"lab_up", "module_lab"}


def lane_of(item: pytest.Item) -> str:
    """The xdist group `item` belongs to."""
    names = set(getattr(item, "fixturenames", ()))
    if names & HOST_FIXTURES or item.path.is_relative_to(HOST_HARNESS):
        return SECOND_HOST_LANE if names & HOST_FIXTURES and second_lane(item.path) else HOST_LANE
    if item.get_closest_marker("serial"):
        return SERIAL_LANE
    return item.nodeid.split("::", 1)[0]


def schedule_rank(item: pytest.Item, lane: str, slow_modules: set[Path]) -> int:
    """Where a test's unit stands in the queue xdist hands out (`--no-loadscope-reorder`: in collection order): the
    ssh target's module first (it resets its hosts to the bare base, so its first `up` is a first configure wherever
    it runs, and first that reset costs nothing), then the rest of the two host lanes (the longest, so that they start
    at once on workers of their own), then the modules with slow tests, then the quick ones, which fill the ends."""
    if item.path == FIRST_LANE_MODULE:
        return 0
    if lane in (HOST_LANE, SECOND_HOST_LANE):
        return 1
    return 2 if item.path in slow_modules else 3


@pytest.hookimpl(tryfirst=True)  # before xdist names each test by its group (`nodeid@group`)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    lanes = {}
    for item in items:
        lanes[item] = lane_of(item)
        item.add_marker(pytest.mark.xdist_group(lanes[item]))
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    slow_modules = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: schedule_rank(item, lanes[item], slow_modules))  # stable: files keep their order
