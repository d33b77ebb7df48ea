"""What a sweep asks of its workers besides running trials, on any target that reaches them over SSH: their GPUs'
use (for `lab sweep watch`), a hold that keeps the idle power-off away while trials are queued for them, and whether
one that went away answers again.

Holds: the sweep touches /var/lib/lab/trials/hold-<sweep> on each worker it still has trials queued or running
for, every HOLD_EVERY_S; the worker's idle check (the lab_idle role) counts a hold file modified within
lab_idle_hold_minutes (5) as busy. A sweep that ends releases its holds; one that dies stops touching them, and
after those minutes the worker may power itself off again.

Restarting stopped machines is the target's business: on GCP, toolkit.gcp.revive.Reviver (whose `poll(name)` this
module's `Revival` protocol describes); on machines of the user's own nothing restarts them, and `answers` tells when
one is back.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from toolkit.errors import LabError
from toolkit.hosts import ssh as remote
from toolkit.sweeps.ssh_slots import MARKERS_DIR

HOLD_PREFIX = "hold-"  # the idle check's HOLD_PREFIX (playbooks/roles/lab_idle/files/lab-idle-check.py)
HOLD_EVERY_S = 60.0  # how often a sweep touches its holds; the idle check's limit is several times this
SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
PROBE_TIMEOUT_S = 20.0
GPU_TIMEOUT_S = 30.0
NO_NVIDIA_SMI = 3  # the exit status of the GPU query where nvidia-smi is not installed
# nvidia-smi's query fields (`nvidia-smi --help-query-gpu`); with csv,noheader,nounits each GPU is one line
# "0, NVIDIA A100-SXM4-40GB, 37, 1234, 40960" (memory in MiB), and a value the GPU does not report is "[N/A]"
# or "[Not Supported]".
GPU_FIELDS = ("index", "name", "utilization.gpu", "memory.used", "memory.total")


class Revival(Protocol):
    """What the sweep asks a target that can restart its stopped workers (toolkit.gcp.revive.Reviver on GCP)."""

    def poll(self, name: str) -> str:
        """The worker's one-line status for `watch`; asks the provider at most once, and only when due."""
        ...

    def running(self, name: str) -> bool:
        """Whether the provider last said the machine runs (then `answers` decides whether its slots rejoin)."""
        ...


def gpu_usage(access: remote.Access, host: remote.Host) -> list[dict[str, Any]] | None:
    """Each GPU of the worker as {"index", "name", "utilization_pct", "memory_used_mib", "memory_total_mib"} (a value
    the GPU does not report is None). [] when the worker has no nvidia-smi or its driver does not answer; None when
    the worker itself does not answer (powered off, network gone). Never raises for the worker's sake."""
    script = (
        f"command -v nvidia-smi >/dev/null 2>&1 || exit {NO_NVIDIA_SMI}; "
        f"exec nvidia-smi --query-gpu={','.join(GPU_FIELDS)} --format=csv,noheader,nounits"
    )
    try:
        result = remote.run(access, host, ["sh", "-c", script], check=False, timeout=GPU_TIMEOUT_S)
    except LabError:  # Unreachable, or no answer within the timeout
        return None
    if result.returncode != 0:
        return []
    return parse_gpus(result.stdout)


def parse_gpus(text: str) -> list[dict[str, Any]]:
    """nvidia-smi's csv,noheader,nounits lines for GPU_FIELDS as gpu_usage's dicts; unreadable lines are left out."""
    gpus = []
    for line in text.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) < len(GPU_FIELDS):
            continue
        # a name with a comma in it (none known) would shift the numbers: they are read from the end
        index, name, numbers = fields[0], ", ".join(fields[1:-3]), fields[-3:]
        if not index.isdigit():
            continue
        utilization, used, total = (_number(value) for value in numbers)
        gpus.append(
            {
                "index": int(index),
                "name": name,
                "utilization_pct": utilization,
                "memory_used_mib": used,
                "memory_total_mib": total,
            }
        )
    return gpus


def _number(value: str) -> int | None:
    try:
        return round(float(value))
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def hold_path(sweep_name: str, holds_dir: str = MARKERS_DIR) -> str:
    if not SWEEP_NAME.fullmatch(sweep_name):
        raise LabError(f"not a sweep name: {sweep_name!r}", hint="letters, digits, '.', '_' and '-'")
    return f"{holds_dir}/{HOLD_PREFIX}{sweep_name}"


def hold(access: remote.Access, host: remote.Host, sweep_name: str, *, holds_dir: str = MARKERS_DIR) -> bool:
    """Touch the sweep's hold file on the worker (call it every HOLD_EVERY_S while the sweep has trials queued or
    running for that worker). True when it was written; False when the worker did not answer or refused (never
    raises for the worker's sake; a bad sweep name is a LabError)."""
    return _quietly(access, host, ["touch", "--", hold_path(sweep_name, holds_dir)])


def release(access: remote.Access, host: remote.Host, sweep_name: str, *, holds_dir: str = MARKERS_DIR) -> bool:
    """Remove the sweep's hold file (the sweep ended, or has nothing more for that worker). True when it is gone."""
    return _quietly(access, host, ["rm", "-f", "--", hold_path(sweep_name, holds_dir)])


def answers(access: remote.Access, host: remote.Host, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the worker answers over SSH now (logs in and runs `true`)."""
    return _quietly(access, host, ["true"], timeout=timeout)


def _quietly(access: remote.Access, host: remote.Host, command: list[str], timeout: float = PROBE_TIMEOUT_S) -> bool:
    try:
        return remote.run(access, host, command, check=False, timeout=timeout).returncode == 0
    except LabError:
        return False
