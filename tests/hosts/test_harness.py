"""The VM-like host harness itself, on a pool of its own (1 host on br-labtest9, 10.209.0.x) beside the session's.

It shares the cached base with the session pool (same top folder) but nothing else, so it neither needs nor
disturbs ``host_pool``. Every check reads the machine's real state (ip, nft, /proc) rather than the harness's notes.
The tests run in file order; the last one takes the pool down and checks that nothing is left.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.hosts.fixtures import require_hosts_or_skip
from tests.hosts.vmhosts import USER, Host, HostPool, pool_from_env

pytestmark = pytest.mark.hosts

BRIDGE = "br-labtest9"
NET = "10.209.0"
FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


@dataclass
class Own:
    pool: HostPool
    host: Host
    forward_before: str
    pids: set[int] = field(default_factory=set)  # every wrapper/nspawn PID seen, for the final check


@pytest.fixture(scope="module")
def own() -> Iterator[Own]:
    require_hosts_or_skip()
    pool = pool_from_env(bridge=BRIDGE, net=NET)
    pool.down()  # leftovers of an interrupted run (it restores their ip_forward too)
    forward_before = FORWARD.read_text().strip()
    try:
        pool.build_base()
        (host,) = pool.up(1)
        yield Own(pool, host, forward_before)
    finally:
        pool.down()


def sh(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)


def note_pids(own: Own) -> tuple[int, int]:
    folder = own.pool.run_dir / own.host.name
    wrapper = int((folder / "wrapper.pid").read_text())
    nspawn = int((folder / "nspawn.pid").read_text())
    own.pids.update((wrapper, nspawn))
    return wrapper, nspawn


def pid_alive(pid: int) -> bool:
    """A process with this PID exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_host_has_its_own_address_on_the_bridge(own: Own) -> None:
    assert own.host.ip == f"{NET}.11"
    assert f"inet {NET}.1/24" in sh("ip", "-4", "-o", "addr", "show", "dev", BRIDGE).stdout
    inside = own.pool.ssh(own.host, "ip", "-4", "-o", "addr", "show", "dev", "host0").stdout
    assert f"inet {NET}.11/24" in inside
    assert own.pool.ssh(own.host, "hostname").stdout.strip() == "c1"
    # The host side of its veth is enslaved to this pool's bridge.
    assert f"master {BRIDGE}" in sh("ip", "-o", "link", "show", "dev", f"vb-{own.host.machine}").stdout


def test_sshd_answers_for_ci_with_sudo_and_for_root(own: Own) -> None:
    assert own.host.user == "ci"
    assert own.host.key.is_file()
    assert own.pool.ssh(own.host, "id", "-un", user=own.host.user).stdout.strip() == "ci"
    assert own.pool.ssh(own.host, "sudo", "-n", "id", "-u", user=own.host.user).stdout.strip() == "0"
    assert own.pool.ssh(own.host, "id", "-u").stdout.strip() == "0"
    # Each host made its own host keys: the cached base has none.
    assert not list((own.pool.base / "etc/ssh").glob("ssh_host_*"))
    assert (own.pool.run_dir / "c1/root/etc/ssh/ssh_host_ed25519_key").is_file()


def test_systemd_is_pid_1(own: Own) -> None:
    assert own.pool.ssh(own.host, "cat", "/proc/1/comm").stdout.strip() == "systemd"
    state = own.pool.ssh(own.host, "systemctl", "is-system-running", check=False).stdout.strip()
    assert state in ("running", "degraded")
    assert own.pool.ssh(own.host, "systemd-detect-virt", check=False).stdout.strip() == "systemd-nspawn"


def test_nat_lets_the_host_reach_pypi_and_the_pip_cache_is_the_machines(own: Own) -> None:
    assert FORWARD.read_text().strip() == "1"
    table = sh("nft", "list", "table", "ip", own.pool.nft_table)
    assert table.returncode == 0, table.stderr
    assert f"ip saddr {NET}.0/24" in table.stdout
    assert "masquerade" in table.stdout
    code = own.pool.ssh(
        own.host, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "https://pypi.org/simple/pip/"
    )
    assert code.stdout.strip() == "200"
    assert own.pool.pip_cache is not None
    own.pool.ssh(own.host, "touch", "/root/.cache/pip/harness-root")
    own.pool.ssh(own.host, "touch", "/home/ci/.cache/pip/harness-ci", user="ci")
    assert (own.pool.pip_cache / "root" / "harness-root").is_file()
    assert (own.pool.pip_cache / "ci" / "harness-ci").is_file()
    (own.pool.pip_cache / "root" / "harness-root").unlink()
    (own.pool.pip_cache / "ci" / "harness-ci").unlink()


def test_a_reboot_inside_comes_back(own: Own) -> None:
    wrapper, nspawn = note_pids(own)
    init_started = own.pool.ssh(own.host, "cut", "-d' '", "-f22", "/proc/1/stat").stdout.strip()
    own.pool.reboot(own.host)
    # A new boot: a new nspawn under the same wrapper, a new init; sshd and systemd are back.
    assert own.pool.is_running(own.host)
    assert pid_alive(wrapper)
    _, nspawn_after = note_pids(own)
    assert nspawn_after != nspawn
    assert not pid_alive(nspawn)
    assert own.pool.ssh(own.host, "cut", "-d' '", "-f22", "/proc/1/stat").stdout.strip() != init_started
    state = own.pool.ssh(own.host, "systemctl", "is-system-running", check=False).stdout.strip()
    assert state in ("running", "degraded")
    assert "booting it again" in own.pool.console_tail(own.host, lines=200)


def test_poweroff_stops_the_host_and_up_starts_it_again(own: Own) -> None:
    wrapper, nspawn = note_pids(own)
    own.pool.ssh(own.host, "systemctl", "poweroff", check=False, timeout=30)
    assert own.pool.wait_stopped(own.host, timeout=60)
    assert not own.pool.is_running(own.host)
    assert not pid_alive(wrapper)
    assert not pid_alive(nspawn)
    # Its disk, as this machine sees it while the host is off: what is written there, the host finds on boot.
    (own.pool.root_of(own.host) / "etc/written-while-off").write_text("seen\n")
    own.pool.up(1)
    assert own.pool.is_running(own.host)
    note_pids(own)
    assert own.pool.ssh(own.host, "hostname").stdout.strip() == "c1"
    assert own.pool.ssh(own.host, "cat", "/etc/written-while-off").stdout == "seen\n"
    assert own.pool.ssh(own.host, "true", user=USER).returncode == 0, "up() waits until the test user can log in"


def test_down_leaves_nothing(own: Own) -> None:
    note_pids(own)
    pool, run_dir = own.pool, own.pool.run_dir
    assert any(str(run_dir) in line for line in Path("/proc/mounts").read_text().splitlines())

    pool.down()

    assert not [pid for pid in own.pids if pid_alive(pid)]
    mounts = Path("/proc/mounts").read_text().splitlines()
    assert not [line for line in mounts if str(run_dir) in line]
    assert sh("ip", "link", "show", "dev", BRIDGE).returncode != 0
    assert f"vb-{own.host.machine}" not in sh("ip", "-o", "link").stdout
    tables = sh("nft", "list", "tables")
    assert tables.returncode == 0
    assert f"table ip {pool.nft_table}" not in tables.stdout
    assert FORWARD.read_text().strip() == own.forward_before
    assert not run_dir.exists()
    assert not (Path("/run/systemd/nspawn/propagate") / own.host.machine).exists()
    assert pool.base_ready()  # the cached base stays for the next run
    pool.down()  # a second down() finds nothing to do and does not complain
