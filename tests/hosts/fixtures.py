"""Pytest fixtures for tests that need VM-like hosts (see vmhosts.py).

The root ``tests/conftest.py`` imports them, so any test module anywhere under tests/ can use them::

    import pytest

    pytestmark = pytest.mark.hosts  # lets `pytest -m "not hosts"` leave these out


    def test_tracker_answers(host_pool, tracker_host, worker_hosts):
        assert host_pool.ssh(tracker_host, "hostname").stdout.strip() == "c1"
        for worker in worker_hosts:
            print(worker.name, worker.ip, worker.user, worker.key)  # c2/c3, 10.200.0.12/13, ci, <top>/id_labtest
        inventory = host_pool.inventory({"tracker": [tracker_host], "workers": worker_hosts})

``host_pool`` (session scope) builds the cached base if needed (~60-80 s the first time), brings up c1 (the tracker),
c2 and c3 (workers), yields the HostPool and always tears it down at the end, even after a failure or Ctrl-C. There
are two such pools, one per host lane (tests/conftest.py): the ssh target's and the remote replica's modules and
the harness's tests use the first (LAB_TEST_HOSTS_*: br-labtest, 10.200.0), every other module the second
(second_pool_from_env: br-labtest2, 10.200.1), so that the two lanes run side by side.
Where the machine cannot run the hosts (not Linux, not root, tools missing) the tests that use it are skipped with
the reason; with LAB_REQUIRE_TEST_HOSTS=1 (CI sets it) they fail instead. LAB_TEST_HOSTS_TOP, LAB_TEST_HOSTS_BRIDGE
and LAB_TEST_HOSTS_NET move the pool (e.g. /var/tmp/lab-test-hosts-dev, br-labdev, 10.202.0) so that people working
on one machine at once do not tear down each other's hosts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hosts.vmhosts import Host, HostPool, missing_requirements, pool_from_env, second_pool_from_env

REQUIRE_ENV = "LAB_REQUIRE_TEST_HOSTS"
SESSION_HOSTS = 3  # c1 = tracker, c2 and c3 = workers
TESTS = Path(__file__).resolve().parents[1]
HARNESS = TESTS / "hosts"
FIRST_LANE_MODULE = TESTS / "labs" / "ssh" / "test_ssh_target.py"  # first in the first host lane
# With it in the first lane, so that the two lanes take about as long (CI's figures: ~1,400 s each).
FIRST_LANE_ALSO = TESTS / "labs" / "ssh" / "test_replica.py"


def require_hosts_or_skip() -> None:
    """Skip the caller if this machine cannot run test hosts; fail instead under LAB_REQUIRE_TEST_HOSTS=1."""
    problems = missing_requirements()
    if not problems:
        return
    reason = "VM-like test hosts unavailable: " + "; ".join(problems)
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def running_pool(request: pytest.FixtureRequest, pool: HostPool, n: int) -> Iterator[HostPool]:
    """Build the base if needed, bring up fresh c1..cN, yield the pool; ``down()`` no matter how the run ends."""
    require_hosts_or_skip()
    pool.down()  # what a killed run of this pool left (hosts still up, mounts, bridge): the hosts must be fresh
    # A safety net: config cleanups run even when Ctrl-C ends the session before fixture teardown. down() is
    # idempotent, so the second call finds nothing to do.
    request.config.add_cleanup(pool.down)
    try:
        pool.build_base()
        pool.up(n)
        yield pool
    finally:
        pool.down()


@pytest.fixture(scope="session")
def session_pool(request: pytest.FixtureRequest) -> Iterator[HostPool]:
    """Three hosts started once for the session: c1 (tracker), c2, c3 (workers)."""
    yield from running_pool(request, pool_from_env(), SESSION_HOSTS)


@pytest.fixture(scope="session")
def second_session_pool(request: pytest.FixtureRequest) -> Iterator[HostPool]:
    """Three more hosts on a bridge of their own (second_pool_from_env), for the second host lane."""
    yield from running_pool(request, second_pool_from_env(), SESSION_HOSTS)


def second_lane(path: Path) -> bool:
    """Whether a module's host tests run in the second host lane, on the second pool: every module but the ssh
    target's (which resets its hosts and runs first in the first lane), the remote replica's and the harness's own
    (tests/hosts)."""
    return path not in (FIRST_LANE_MODULE, FIRST_LANE_ALSO) and not path.is_relative_to(HARNESS)


@pytest.fixture(scope="module")
def host_pool(request: pytest.FixtureRequest) -> HostPool:
    """Three hosts of the session, each running when a module starts: a module that powers a worker off (a power
    cut, idle self-shutdown) leaves it to boot again for the next one. ``pool.hosts()`` lists them. The pool is the
    lane's: tests/conftest.py runs each lane's modules in one worker, and that worker starts only its lane's pool."""
    pool: HostPool = request.getfixturevalue("second_session_pool" if second_lane(request.path) else "session_pool")
    pool.up(SESSION_HOSTS)
    return pool


@pytest.fixture(scope="module")
def tracker_host(host_pool: HostPool) -> Host:
    """c1 of the session pool."""
    return host_pool.host("c1")


@pytest.fixture(scope="module")
def worker_hosts(host_pool: HostPool) -> list[Host]:
    """c2 and c3 of the session pool."""
    return [host_pool.host(f"c{i}") for i in range(2, SESSION_HOSTS + 1)]
