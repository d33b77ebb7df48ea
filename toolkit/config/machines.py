"""What GCP machine types carry in GPUs: the one place the lab knows machine families.

A2/A3/A4/G2 types come with their GPUs built in; N1 types take attached accelerators
(`lab:workerGpu` x `lab:workerGpuCount`); other families have no GPUs at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Families whose GPUs are part of the machine type, and the GPU they carry.
BUILTIN_GPU_FAMILIES: dict[str, str] = {
    "a2-highgpu": "nvidia-tesla-a100",
    "a2-megagpu": "nvidia-tesla-a100",
    "a2-ultragpu": "nvidia-a100-80gb",
    "a3-highgpu": "nvidia-h100-80gb",
    "a3-megagpu": "nvidia-h100-mega-80gb",
    "a3-edgegpu": "nvidia-h100-80gb",
    "a3-ultragpu": "nvidia-h200-141gb",
    "a4-highgpu": "nvidia-b200",
    "g2-standard": "nvidia-l4",
}

# L4s per G2 machine type (the others spell their count in the name: a2-highgpu-4g).
G2_GPUS: dict[int, int] = {4: 1, 8: 1, 12: 1, 16: 1, 24: 2, 32: 1, 48: 4, 96: 8}

# Families that take attached accelerators, the GPUs they accept, and the counts GCP allows.
ATTACHABLE_GPUS: dict[str, dict[str, tuple[int, ...]]] = {
    "n1": {
        "nvidia-tesla-t4": (1, 2, 4),
        "nvidia-tesla-v100": (1, 2, 4, 8),
        "nvidia-tesla-p100": (1, 2, 4),
        "nvidia-tesla-p4": (1, 2, 4),
    },
}

# Series that take only Hyperdisk (no Persistent Disk): their boot disk is Hyperdisk Balanced, the one Hyperdisk
# type that can boot. GCP refuses pd-ssd for them ("pd-balanced disk type cannot be used by a4x-highgpu-4g machine
# type"). Source: https://cloud.google.com/compute/docs/accelerator-optimized-machines, the "Supported disk types"
# of each series (A3 Ultra and A4: Hyperdisk Balanced, Extreme, ML; A3 High/Mega/Edge, A2, G2 also Persistent Disk),
# and https://cloud.google.com/compute/docs/disks/hyperdisks (Hyperdisk Balanced is the only boot Hyperdisk).
HYPERDISK_ONLY_SERIES = ("a3-ultragpu", "a4-highgpu")
HYPERDISK_BOOT = "hyperdisk-balanced"
PERSISTENT_DISK_BOOT = "pd-ssd"

MACHINE_TYPE = re.compile(r"^[a-z][a-z0-9]*-[a-z]+(-[0-9]+[a-z]*)?$")


@dataclass(frozen=True)
class GpuShape:
    """The GPUs one worker has: which, how many, and whether they are attached as accelerators."""

    gpu: str
    count: int
    attached: bool


def family(machine_type: str) -> str:
    return machine_type.split("-", 1)[0]


def series(machine_type: str) -> str:
    """`a3-ultragpu-8g` -> `a3-ultragpu`; `n1-standard-8` -> `n1-standard`."""
    return "-".join(machine_type.split("-")[:2])


def boot_disk_type(machine_type: str) -> str:
    """The worker boot disk's type for a machine type: Hyperdisk Balanced where the series takes only Hyperdisk,
    else pd-ssd (fast local reads of datasets and environments)."""
    return HYPERDISK_BOOT if series(machine_type) in HYPERDISK_ONLY_SERIES else PERSISTENT_DISK_BOOT


def builtin_gpus(machine_type: str) -> GpuShape | None:
    """The GPUs built into a machine type (A2, A3, A4, G2), or None when it has none built in."""
    gpu = BUILTIN_GPU_FAMILIES.get(series(machine_type))
    if gpu is None:
        return None
    if series(machine_type) == "g2-standard":
        vcpus = machine_type.rsplit("-", 1)[-1]
        count = G2_GPUS.get(int(vcpus), 1) if vcpus.isdigit() else 1
    else:
        match = re.search(r"-(\d+)g$", machine_type)
        count = int(match.group(1)) if match else 1
    return GpuShape(gpu=gpu, count=count, attached=False)


def gpu_problem(machine_type: str, gpu: str | None, count: int) -> str | None:
    """Why this machine type and accelerator cannot go together, or None when they can."""
    if builtin_gpus(machine_type) is not None:
        if gpu:
            return f"{machine_type} comes with its own GPUs; remove lab:workerGpu (it is only for N1 machine types)"
        return None
    accepted = ATTACHABLE_GPUS.get(family(machine_type))
    if accepted is None:
        return (
            f"{machine_type} has no GPUs; use an A2 (A100), A3 (H100), G2 (L4) type, or an N1 type with lab:workerGpu"
        )
    if not gpu:
        return f"{machine_type} needs lab:workerGpu, one of: {', '.join(sorted(accepted))}"
    if gpu not in accepted:
        return f"{gpu} cannot be attached to {machine_type}; choose one of: {', '.join(sorted(accepted))}"
    if count not in accepted[gpu]:
        allowed = ", ".join(str(c) for c in accepted[gpu])
        return f"lab:workerGpuCount {count} is not offered for {gpu}; choose {allowed}"
    return None


def worker_gpus(machine_type: str, gpu: str | None, count: int) -> GpuShape | None:
    """The GPUs one worker has, for a valid combination."""
    built_in = builtin_gpus(machine_type)
    if built_in is not None:
        return built_in
    if gpu:
        return GpuShape(gpu=gpu, count=count, attached=True)
    return None
