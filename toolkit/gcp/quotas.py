"""The Compute Engine quotas a stack needs, compared with what the project has: asked by `lab doctor --target gcp`
and by `lab up` before anything that bills is created (a quota that is short would stop the workers after the
tracker already runs).

What counts, from https://cloud.google.com/compute/resource-usage (GPU quota, CPU quota, preemptible quotas):
- GPUs: the regional quota of the GPU model (NVIDIA_A100_GPUS, NVIDIA_L4_GPUS, ...) and the project's
  GPUS_ALL_REGIONS, which caps every GPU of every region (new projects have 0). Spot VMs use the preemptible quota
  of the model (PREEMPTIBLE_NVIDIA_A100_GPUS, ...) where the project has one in the region, else the standard one.
- vCPUs: the family's regional quota (CPUS for N1 and E2, A2_CPUS for A2, N2_CPUS, ...) and CPUS_ALL_REGIONS;
  spot VMs use PREEMPTIBLE_CPUS where the project has it.
Metric names are the Compute API's Quota.metric values (https://cloud.google.com/compute/docs/reference/rest/v1/
regions/get: `quotas[]` of {metric, limit, usage}). A metric the answer does not list is not checked (said so),
never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from toolkit.config import machines

if TYPE_CHECKING:
    from toolkit.config import schema

QUOTAS_PAGE = "https://console.cloud.google.com/iam-admin/quotas"
ALL_REGIONS = "all regions"
GPUS_ALL_REGIONS = "GPUS_ALL_REGIONS"
CPUS_ALL_REGIONS = "CPUS_ALL_REGIONS"
PREEMPTIBLE = "PREEMPTIBLE_"
PREEMPTIBLE_CPUS = "PREEMPTIBLE_CPUS"

# The accelerator type (lab:workerGpu, or the one built into the machine type) -> its regional quota metric.
GPU_METRICS: dict[str, str] = {
    "nvidia-tesla-t4": "NVIDIA_T4_GPUS",
    "nvidia-tesla-v100": "NVIDIA_V100_GPUS",
    "nvidia-tesla-p100": "NVIDIA_P100_GPUS",
    "nvidia-tesla-p4": "NVIDIA_P4_GPUS",
    "nvidia-tesla-a100": "NVIDIA_A100_GPUS",
    "nvidia-a100-80gb": "NVIDIA_A100_80GB_GPUS",
    "nvidia-l4": "NVIDIA_L4_GPUS",
    "nvidia-h100-80gb": "NVIDIA_H100_GPUS",
    "nvidia-h100-mega-80gb": "NVIDIA_H100_MEGA_GPUS",
}
# The machine family -> the regional vCPU quota it draws on. Families not named here are not checked.
CPU_METRICS: dict[str, str] = {
    "n1": "CPUS",
    "e2": "CPUS",
    "a2": "A2_CPUS",
    "n2": "N2_CPUS",
    "n2d": "N2D_CPUS",
    "c2": "C2_CPUS",
    "c2d": "C2D_CPUS",
    "c3": "C3_CPUS",
}
A2_VCPUS_PER_GPU = 12  # a2-highgpu-1g: 12 vCPUs, ... -8g: 96; a2-ultragpu the same
A2_MEGA_VCPUS = 96  # a2-megagpu-16g
_SIZED = re.compile(r"^[a-z0-9]+-(standard|highmem|highcpu)-(\d+)$")


def page(project: str | None) -> str:
    return QUOTAS_PAGE + (f"?project={project}" if project else "")


def vcpus(machine_type: str) -> int | None:
    """vCPUs of a machine type, where its name tells them (e2-standard-2, n1-highmem-8, a2-highgpu-4g)."""
    if found := _SIZED.match(machine_type):
        return int(found.group(2))
    series = machines.series(machine_type)
    if series == "a2-megagpu":
        return A2_MEGA_VCPUS
    if series in ("a2-highgpu", "a2-ultragpu") and (count := re.search(r"-(\d+)g$", machine_type)):
        return A2_VCPUS_PER_GPU * int(count.group(1))
    return None


@dataclass(frozen=True)
class Need:
    """So many more units of a quota: `metrics` in the order the request uses them (the first one the project has
    a limit for), in a region or across all regions."""

    metrics: tuple[str, ...]
    scope: str
    amount: float
    what: str


@dataclass(frozen=True)
class Shortfall:
    metric: str
    scope: str
    needed: float
    limit: float
    usage: float
    what: str
    also: tuple[str, ...] = ()  # other metrics that would do as well (the standard quota, for spot VMs)

    def line(self) -> str:
        where = "across all regions" if self.scope == ALL_REGIONS else f"in {self.scope}"
        free = max(self.limit - self.usage, 0)
        other = f" (or {', '.join(self.also)})" if self.also else ""
        return (
            f"quota {self.metric}{other} {where} is {self.limit:g} with {self.usage:g} in use, and {self.what} "
            f"need{'s' * (self.needed == 1)} {self.needed:g} ({free:g} free)"
        )

    def fix(self, project: str | None) -> str:
        return f"ask for more at {page(project)} (filter on {self.metric}), or lower lab:workers"


@dataclass
class Report:
    shortfalls: list[Shortfall] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # "METRIC in SCOPE: free/needed"
    unchecked: list[str] = field(default_factory=list)  # what the answers did not list


def needs(settings: schema.Settings, *, existing_workers: int = 0, tracker_exists: bool = False) -> list[Need]:
    """The quota the stack's resources not created yet will take."""
    region = settings.region or ""
    new_workers = max(settings.workers - existing_workers, 0)
    found: list[Need] = []
    gpus = settings.worker_gpus
    if new_workers and gpus:
        amount = float(new_workers * gpus.count)
        what = f"{new_workers} worker{'s' * (new_workers != 1)} ({gpus.count} x {gpus.gpu} each)"
        metric = GPU_METRICS.get(gpus.gpu, gpus.gpu.upper().replace("-", "_") + "_GPUS")
        regional = (PREEMPTIBLE + metric, metric) if settings.spot else (metric,)
        found.append(Need(regional, region, amount, what))
        found.append(Need((GPUS_ALL_REGIONS,), ALL_REGIONS, amount, what))
    cpu_needs: list[tuple[str, int, str]] = []
    worker_cpus = vcpus(settings.worker_machine_type)
    if new_workers and worker_cpus:
        cpu_needs.append((settings.worker_machine_type, new_workers * worker_cpus, f"{new_workers} worker(s)"))
    tracker_cpus = vcpus(settings.tracker_machine_type)
    if not tracker_exists and tracker_cpus:
        cpu_needs.append((settings.tracker_machine_type, tracker_cpus, "the tracker"))
    for machine_type, amount, what in cpu_needs:
        metric = CPU_METRICS.get(machines.family(machine_type))
        if metric is None:
            continue
        spot_worker = settings.spot and what != "the tracker"
        found.append(Need((PREEMPTIBLE_CPUS, metric) if spot_worker else (metric,), region, float(amount), what))
    total_cpus = sum(amount for _, amount, _ in cpu_needs)
    if total_cpus:
        found.append(Need((CPUS_ALL_REGIONS,), ALL_REGIONS, float(total_cpus), "the lab's VMs"))
    return found


def compare(
    wanted: list[Need], regional: dict[str, tuple[float, float]], project: dict[str, tuple[float, float]]
) -> Report:
    """Each need against the quotas GCP answered ({metric: (limit, usage)})."""
    report = Report()
    for need in wanted:
        answered = project if need.scope == ALL_REGIONS else regional
        listed = [m for m in need.metrics if m in answered]
        if not listed:
            report.unchecked.append(f"{'/'.join(need.metrics)} ({need.scope}) is not in GCP's answer")
            continue
        # The first metric the project has a limit for is the one the request uses (a spot VM's preemptible
        # quota where there is one); when none has a limit, the first is the one to ask for.
        metric = next((m for m in listed if answered[m][0] > 0), listed[0])
        limit, usage = answered[metric]
        if limit - usage < need.amount:
            also = tuple(m for m in listed if m != metric)
            report.shortfalls.append(Shortfall(metric, need.scope, need.amount, limit, usage, need.what, also))
        else:
            report.checked.append(
                f"{metric} ({need.scope}): {limit - usage:g} free of {limit:g}, {need.amount:g} needed"
            )
    return report


def read(settings: schema.Settings, *, existing_workers: int = 0, tracker_exists: bool = False) -> Report:
    """Ask GCP (Compute regions.get and projects.get) and compare. Raises the LabError of a call GCP did not
    answer (toolkit.gcp.api.NotAsked, ApiError)."""
    from toolkit.gcp import api as gcp_api

    wanted = needs(settings, existing_workers=existing_workers, tracker_exists=tracker_exists)
    if not wanted:
        return Report()
    project = settings.project or ""
    regional = (
        gcp_api.region_quotas(project, settings.region or "") if any(n.scope != ALL_REGIONS for n in wanted) else {}
    )
    return compare(wanted, regional, gcp_api.project_quotas(project))
