"""The harness's decisions that need no hosts: what it asks to install, where it debootstraps from, skip or fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hosts import fixtures, vmhosts


def test_missing_tools_name_the_packages_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vmhosts.sys, "platform", "linux")
    monkeypatch.setattr(vmhosts.os, "geteuid", lambda: 0)
    absent = {"systemd-nspawn", "debootstrap", "nft"}
    monkeypatch.setattr(vmhosts.shutil, "which", lambda tool: None if tool in absent else f"/usr/bin/{tool}")
    with pytest.raises(vmhosts.HostsUnavailable) as raised:
        vmhosts.check_requirements()
    assert "apt-get install systemd-container debootstrap nftables" in str(raised.value)


def test_not_root_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vmhosts.sys, "platform", "linux")
    monkeypatch.setattr(vmhosts.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(vmhosts.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    assert any("root" in problem for problem in vmhosts.missing_requirements())


def test_unavailable_hosts_skip_but_fail_when_ci_requires_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fixtures, "missing_requirements", lambda: ["missing nft"])
    monkeypatch.delenv(fixtures.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="missing nft"):
        fixtures.require_hosts_or_skip()
    monkeypatch.setenv(fixtures.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="missing nft"):
        fixtures.require_hosts_or_skip()


def test_mirrors_come_from_the_machines_apt_sources(tmp_path: Path) -> None:
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n"
        "URIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
    )
    assert vmhosts.apt_mirrors([deb822]) == ("http://mirror.example/debian", "http://mirror.example/debian-security")
    legacy = tmp_path / "sources.list"
    legacy.write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [signed-by=/k.gpg] https://m.example/debian bookworm main\n"
        "deb http://s.example/debian-security bookworm-security main\n"
    )
    assert vmhosts.apt_mirrors([legacy]) == ("https://m.example/debian", "http://s.example/debian-security")
    assert vmhosts.apt_mirrors([tmp_path / "absent"]) == ("http://deb.debian.org/debian", None)


def test_pools_on_other_bridges_use_other_names(tmp_path: Path) -> None:
    default = vmhosts.HostPool(tmp_path)
    other = vmhosts.HostPool(tmp_path, bridge="br-labtest9", net="10.209.0")
    assert (default.bridge, default.net, default.top) == ("br-labtest", "10.200.0", tmp_path)
    assert default.base == other.base == tmp_path / "roots" / "bookworm"  # the cached base is shared
    assert default.run_dir != other.run_dir
    assert default.nft_table != other.nft_table
    assert default._host(1).machine != other._host(1).machine
    assert other._host(2).ip == "10.209.0.12"
    assert len(f"vb-{other._host(99).machine}") <= 15  # nspawn's veth name fits an interface name
    assert vmhosts.HostPool().top == Path("/var/tmp/lab-test-hosts")
    with pytest.raises(ValueError, match="octets"):
        vmhosts.HostPool(tmp_path, net="10.200.0.0/24")


def test_pool_from_env_moves_the_pool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LAB_TEST_HOSTS_TOP", str(tmp_path))
    monkeypatch.setenv("LAB_TEST_HOSTS_BRIDGE", "br-labdev")
    monkeypatch.setenv("LAB_TEST_HOSTS_NET", "10.202.0")
    pool = vmhosts.pool_from_env()
    assert (pool.top, pool.bridge, pool.net) == (tmp_path, "br-labdev", "10.202.0")
    assert vmhosts.pool_from_env(bridge="br-labtest9").bridge == "br-labtest9"


def test_the_second_pool_sits_beside_the_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("LAB_TEST_HOSTS_BRIDGE", "LAB_TEST_HOSTS_NET", "LAB_TEST_HOSTS_BRIDGE2", "LAB_TEST_HOSTS_NET2"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LAB_TEST_HOSTS_TOP", str(tmp_path))
    first, second = vmhosts.pool_from_env(), vmhosts.second_pool_from_env()
    assert (second.top, second.bridge, second.net) == (tmp_path, "br-labtest2", "10.200.1")
    assert second.base == first.base and second.key == first.key  # one cached base, one key
    assert (second.run_dir, second.nft_table) != (first.run_dir, first.nft_table)
    assert second._host(1).machine != first._host(1).machine
    monkeypatch.setenv("LAB_TEST_HOSTS_BRIDGE", "br-labdev")
    monkeypatch.setenv("LAB_TEST_HOSTS_NET", "10.202.0")
    assert (vmhosts.second_pool_from_env().bridge, vmhosts.second_pool_from_env().net) == ("br-labdev2", "10.202.1")
    monkeypatch.setenv("LAB_TEST_HOSTS_BRIDGE2", "br-labdevb")
    monkeypatch.setenv("LAB_TEST_HOSTS_NET2", "10.212.0")
    assert (vmhosts.second_pool_from_env().bridge, vmhosts.second_pool_from_env().net) == ("br-labdevb", "10.212.0")
