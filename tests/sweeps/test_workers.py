"""toolkit.sweeps.workers: nvidia-smi's lines read into GPU figures, and, on VM-like hosts over real SSH, a worker's
GPU use, a sweep's hold seen by the real idle check (playbooks/roles/lab_idle/files/lab-idle-check.py), and a worker
that stops answering and comes back."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from toolkit.errors import LabError
from toolkit.hosts import ssh as remote
from toolkit.sweeps import workers

IDLE_CHECK = Path(__file__).resolve().parents[2] / "playbooks/roles/lab_idle/files/lab-idle-check.py"
# Two A100s as nvidia-smi prints them for `--query-gpu=index,name,utilization.gpu,memory.used,memory.total
# --format=csv,noheader,nounits` (comma-separated, no units; memory in MiB; "[N/A]" where a GPU does not report a
# value, e.g. utilization of a MIG-partitioned GPU: nvidia-smi(1), "--query-gpu" and "--format").
TWO_A100S = "0, NVIDIA A100-SXM4-40GB, 37, 30214, 40960\n1, NVIDIA A100-SXM4-40GB, [N/A], 512, 40960\n"


def test_nvidia_smi_lines_become_gpu_figures():
    assert workers.parse_gpus(TWO_A100S) == [
        {"index": 0, "name": "NVIDIA A100-SXM4-40GB", "utilization_pct": 37, "memory_used_mib": 30214,
         "memory_total_mib": 40960},
        {"index": 1, "name": "NVIDIA A100-SXM4-40GB", "utilization_pct": None, "memory_used_mib": 512,
         "memory_total_mib": 40960},
    ]  # fmt: skip
    assert workers.parse_gpus("") == []
    assert workers.parse_gpus("No devices were found\n") == []


def test_sweep_names_are_checked_before_they_become_paths():
    assert workers.hold_path("resnet-sweep.2") == "/var/lib/lab/trials/hold-resnet-sweep.2"
    for bad in ("../etc/passwd", "a b", "", "-rf", "x/y"):
        with pytest.raises(LabError, match="not a sweep name"):
            workers.hold_path(bad)


# -- on VM-like hosts ------------------------------------------------------------------------------------------


@pytest.fixture
def worker(host_pool, worker_hosts, tmp_path):
    """c3 of the session pool as a lab worker: the login user owns /var/lib/lab/trials (as lab_worker makes it)."""
    vm = worker_hosts[-1]
    host_pool.ssh(vm, f"install -d -o {vm.user} -m 0755 /var/lib/lab/trials && rm -f /var/lib/lab/trials/hold-*")
    access = remote.Access(user=vm.user, key=vm.key, known_hosts=tmp_path / "known_hosts")
    yield access, remote.Host("worker-2", vm.ip, remote.WORKER), vm
    host_pool.ssh(vm, "rm -f /usr/local/bin/nvidia-smi /var/lib/lab/trials/hold-*", check=False)


@pytest.mark.hosts
def test_gpu_use_of_a_worker_over_ssh(host_pool, worker):
    access, host, vm = worker
    assert workers.gpu_usage(access, host) == [], "no nvidia-smi: no GPU figures"
    fake = f"#!/bin/sh\nprintf %s {shlex.quote(TWO_A100S)}\n"
    host_pool.ssh(vm, "cat > /usr/local/bin/nvidia-smi && chmod 755 /usr/local/bin/nvidia-smi", input=fake)
    gpus = workers.gpu_usage(access, host)
    assert gpus is not None and [(g["index"], g["utilization_pct"], g["memory_used_mib"]) for g in gpus] == [
        (0, 37, 30214),
        (1, None, 512),
    ]
    host_pool.ssh(vm, "printf '#!/bin/sh\\necho NVIDIA-SMI has failed >&2; exit 9\\n' > /usr/local/bin/nvidia-smi")
    assert workers.gpu_usage(access, host) == [], "a broken driver: no figures, no error"


@pytest.mark.hosts
def test_a_sweeps_hold_keeps_the_idle_check_from_powering_off(host_pool, worker):
    access, host, vm = worker
    host_pool.ssh(vm, "mkdir -p /opt/lab/bin && cat > /opt/lab/bin/lab-idle-check", input=IDLE_CHECK.read_text())
    dry_run = (
        "python3 /opt/lab/bin/lab-idle-check --dry-run --minutes 1 --hold-minutes 5 --trials /var/lib/lab/trials "
        "--state /tmp/last-active --log /tmp/idle.log --ssh-port 2"  # port 2: this test's own SSH session is no use
    )

    def seen() -> dict:
        return json.loads(host_pool.ssh(vm, dry_run).stdout)["checks"]["sweeps"]

    assert seen() == {"busy": False, "seen": "no sweep holds it"}
    assert workers.hold(access, host, "resnet-sweep") is True
    assert seen() == {"busy": True, "seen": "held by sweep(s) resnet-sweep"}
    owner = host_pool.ssh(vm, "stat -c %U /var/lib/lab/trials/hold-resnet-sweep").stdout.strip()
    assert owner == vm.user, "written as the login user, as the trial markers are"
    host_pool.ssh(vm, "touch -d '-6 minutes' /var/lib/lab/trials/hold-resnet-sweep")
    assert seen()["busy"] is False, "a sweep that stopped touching its hold no longer holds the worker"
    assert workers.hold(access, host, "resnet-sweep") is True
    assert seen()["busy"] is True
    assert workers.release(access, host, "resnet-sweep") is True
    assert seen() == {"busy": False, "seen": "no sweep holds it"}
    assert workers.release(access, host, "resnet-sweep") is True, "releasing twice is fine"


@pytest.mark.hosts
def test_a_worker_that_goes_away_is_noticed_and_answers_again_when_back(host_pool, worker):
    access, host, vm = worker
    assert workers.answers(access, host) is True
    host_pool.power_off_hard(vm)
    try:
        assert workers.answers(access, host) is False
        assert workers.gpu_usage(access, host) is None, "no answer is not 'no GPU'"
        assert workers.hold(access, host, "resnet-sweep") is False
    finally:
        host_pool.up(3)  # the session's pool stays whole for the tests after this one
    assert workers.answers(access, host) is True
