"""The session's ``host_pool`` as other test folders use it: c1 the tracker, c2 and c3 the workers."""

from __future__ import annotations

import pytest

from tests.hosts.vmhosts import Host, HostPool

pytestmark = pytest.mark.hosts


def test_tracker_and_workers_are_up_and_reach_each_other(
    host_pool: HostPool, tracker_host: Host, worker_hosts: list[Host]
) -> None:
    assert [h.name for h in host_pool.hosts()] == ["c1", "c2", "c3"]
    assert tracker_host.name == "c1"
    assert [w.name for w in worker_hosts] == ["c2", "c3"]
    assert len({h.ip for h in host_pool.hosts()}) == 3
    for host in (tracker_host, *worker_hosts):
        assert host_pool.ssh(host, "hostname", user=host.user).stdout.strip() == host.name
    for worker in worker_hosts:  # workers reach the tracker's sshd over the bridge
        host_pool.ssh(worker, "timeout", "5", "bash", "-c", f"'</dev/tcp/{tracker_host.ip}/22'")
    inventory = host_pool.inventory({"tracker": [tracker_host], "workers": worker_hosts})
    assert f"c1 ansible_host={tracker_host.ip}" in inventory
    assert "[workers]\nc2\nc3\n" in inventory
    assert f"ansible_ssh_private_key_file={tracker_host.key}" in inventory
