"""What the lab costs per hour: GCP's list prices (toolkit/cost/prices.yaml) applied to a stack's resources.

GCP bills a VM as its vCPUs, memory and GPUs per hour, by machine series, and disks per GB-month; the
table keeps those parts (standard and spot) and the machine shapes, so a machine type is priced the way
GCP bills it. A table at $LAB_HOME/prices.yaml overrides any part of it, and prices hosts the lab did not
create (`hosts:`, for the ssh and local targets).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from toolkit.config import machines, paths, schema
from toolkit.errors import LabError

HOURS_PER_MONTH = 730  # GCP's conversion of per-month disk prices to hours
PACKAGED = Path(__file__).resolve().parent / "prices.yaml"
TRACKER_BOOT_DISK_GB = 20  # infra/tracker.py
LOCAL_HOST = "local"


@dataclass(frozen=True)
class PriceLine:
    """One priced resource of the lab: what it is, how many, and the price of one per hour."""

    resource: str
    item: str
    count: int
    unit_usd_per_hour: float | None
    note: str = ""

    @property
    def usd_per_hour(self) -> float | None:
        return None if self.unit_usd_per_hour is None else self.count * self.unit_usd_per_hour

    def describe(self) -> str:
        head = f"{self.count} x {self.resource} {self.item}"
        if self.unit_usd_per_hour is None:
            note = f" ({self.note})" if self.note else ""
            return f"{head}: no price in the table; add it to $LAB_HOME/prices.yaml{note}"
        each = f", ${self.unit_usd_per_hour:.4f}/h each" if self.count > 1 else ""
        note = f" ({self.note})" if self.note else ""
        return f"{head}: ${self.usd_per_hour:.4f}/h{each}{note}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "usd_per_hour": self.usd_per_hour}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PriceLine:
        unit = raw.get("unit_usd_per_hour")
        return cls(
            resource=str(raw["resource"]),
            item=str(raw["item"]),
            count=int(raw["count"]),
            unit_usd_per_hour=None if unit is None else float(unit),
            note=str(raw.get("note", "")),
        )


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@lru_cache(maxsize=8)
def _read(path: Path, mtime: float) -> dict[str, Any]:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        reason = str(exc).splitlines()[0]
        raise LabError(f"cannot read the price table {path}: {reason}", hint="fix or remove that file") from None
    if not isinstance(raw, dict):
        raise LabError(f"the price table {path} is not a mapping", hint="see toolkit/cost/prices.yaml for the layout")
    return raw


def user_table() -> Path:
    return paths.lab_home() / "prices.yaml"


def table() -> dict[str, Any]:
    """The packaged table with $LAB_HOME/prices.yaml laid over it."""
    data = _read(PACKAGED, PACKAGED.stat().st_mtime)
    override = user_table()
    if override.is_file():
        data = _merge(data, _read(override, override.stat().st_mtime))
    return data


def _region(data: dict[str, Any], region: str | None) -> tuple[dict[str, Any], str]:
    regions = data.get("regions") or {}
    if region and region in regions:
        return regions[region], ""
    fallback = str(data.get("fallback_region", "us-central1"))
    return regions.get(fallback, {}), f"no prices for {region or 'the region'}: priced as {fallback}"


def _pick(pair: Any, spot: bool) -> float | None:
    if isinstance(pair, int | float):
        return float(pair)
    if isinstance(pair, list | tuple) and len(pair) == 2:
        return float(pair[1] if spot else pair[0])
    return None


def gpu_hourly(data: dict[str, Any], region: str | None, gpu: str, spot: bool) -> float | None:
    return _pick((_region(data, region)[0].get("gpus") or {}).get(gpu), spot)


def machine_hourly(data: dict[str, Any], region: str | None, machine_type: str, spot: bool) -> float | None:
    """A machine type per hour: vCPUs and memory at its series' prices, plus its built-in GPUs."""
    prices, _ = _region(data, region)
    shape = (data.get("shapes") or {}).get(machine_type)
    series = (prices.get("series") or {}).get(machines.family(machine_type))
    if not shape or not series:
        return None
    vcpu, memory = _pick(series.get("vcpu"), spot), _pick(series.get("memory"), spot)
    if vcpu is None or memory is None:
        return None
    total = shape[0] * vcpu + shape[1] * memory
    built_in = machines.builtin_gpus(machine_type)
    if built_in is not None:
        gpu = gpu_hourly(data, region, built_in.gpu, spot)
        if gpu is None:
            return None
        total += built_in.count * gpu
    return total


def disk_hourly(data: dict[str, Any], region: str | None, kind: str, gb: int) -> float | None:
    monthly = (_region(data, region)[0].get("disks") or {}).get(kind)
    return None if monthly is None else gb * float(monthly) / HOURS_PER_MONTH


def worker_hourly(settings: schema.Settings, data: dict[str, Any] | None = None) -> float | None:
    """One worker's compute per hour (machine and attached GPUs): what stops when the worker stops."""
    data = table() if data is None else data
    machine = machine_hourly(data, settings.region, settings.worker_machine_type, settings.spot)
    gpus = settings.worker_gpus
    if machine is None:
        return None
    if gpus is not None and gpus.attached:
        each = gpu_hourly(data, settings.region, gpus.gpu, settings.spot)
        return None if each is None else machine + gpus.count * each
    return machine


# -- the replica in the bucket (toolkit/tracker/replica.py; figures and sources in prices.yaml `replica:`) --------


def replica_in_bucket(settings: schema.Settings) -> bool:
    """The replica is in the lab's GCS bucket: lab:replica's default on gcp, or a gs:// one."""
    return settings.replica is None or settings.replica.startswith("gs://")


def replica_lines(settings: schema.Settings, data: dict[str, Any] | None = None) -> list[PriceLine]:
    """What the replica costs per hour the lab is up, for lab:replicaSyncInterval: its operations (an upload per
    sync per DB being written, a listing, a read and an upload per compaction) and the noncurrent versions of
    what it deletes, kept the replica's lifecycle days plus soft delete's."""
    from toolkit.config import replica_bucket as replica

    data = table() if data is None else data
    prices, fallback = _region(data, settings.region)
    storage = prices.get("storage") or {}
    model = data.get("replica") or {}
    dbs = float(model.get("dbs_written", len(replica.DBS)))
    compactions = float(model.get("compactions_per_hour", 0))
    syncs = 3600.0 / settings.replica_sync_s
    lists = float(model.get("lists_per_sync", 0))
    class_a = dbs * (syncs * (1 + lists) + 2 * compactions)  # uploads and listings, and each compaction's two
    class_b = dbs * (syncs + compactions)  # the files each compaction reads
    per_a, per_b = storage.get("class_a_per_1000"), storage.get("class_b_per_1000")
    ops = None if per_a is None or per_b is None else (class_a * float(per_a) + class_b * float(per_b)) / 1000
    kept_days = replica.NONCURRENT_DAYS + replica.SOFT_DELETE_DAYS
    gb_per_hour = dbs * (syncs + compactions) * float(model.get("kib_per_sync", 0)) / 2**20
    stored_gb = gb_per_hour * kept_days * 24
    gb_month = storage.get("standard_gb_month")
    kept = None if gb_month is None else stored_gb * float(gb_month) / HOURS_PER_MONTH
    every = settings.replica_sync_interval
    return [
        PriceLine(
            "replica operations",
            f"sync every {every}: {class_a:,.0f} Class A + {class_b:,.0f} Class B per hour, {dbs:g} DBs written",
            1,
            ops,
            fallback,
        ),
        PriceLine(
            "replica old versions",
            f"~{stored_gb:,.1f} GB of deleted LTX files kept {kept_days} days (noncurrent + soft delete)",
            1,
            kept,
            "estimate: " + (fallback or "the size of each sync is prices.yaml's replica.kib_per_sync"),
        ),
    ]


def hourly(settings: schema.Settings) -> list[PriceLine]:
    """Every priced resource of a gcp stack while it is up (the bucket's objects are billed by use and not
    counted; the replica's operations and the versions it leaves are)."""
    data = table()
    region = settings.region
    _, fallback = _region(data, region)
    spot = "spot" if settings.spot else "standard"
    lines = [
        PriceLine(
            "tracker",
            f"{settings.tracker_machine_type} (standard)",
            1,
            machine_hourly(data, region, settings.tracker_machine_type, spot=False),
            fallback,
        ),
        PriceLine(
            "tracker disks",
            f"pd-balanced {TRACKER_BOOT_DISK_GB + settings.tracker_disk_gb} GB",
            1,
            disk_hourly(data, region, "pd-balanced", TRACKER_BOOT_DISK_GB + settings.tracker_disk_gb),
            fallback,
        ),
        PriceLine("tracker address", "external IPv4", 1, _pick(_region(data, region)[0].get("external_ipv4"), False)),
    ]
    if settings.workers:
        machine = machine_hourly(data, region, settings.worker_machine_type, settings.spot)
        lines.append(
            PriceLine("worker", f"{settings.worker_machine_type} ({spot})", settings.workers, machine, fallback)
        )
        gpus = settings.worker_gpus
        if gpus is not None and gpus.attached:
            lines.append(
                PriceLine(
                    "worker GPU",
                    f"{gpus.gpu} ({spot})",
                    settings.workers * gpus.count,
                    gpu_hourly(data, region, gpus.gpu, settings.spot),
                    fallback,
                )
            )
        boot = machines.boot_disk_type(settings.worker_machine_type)
        lines.append(
            PriceLine(
                "worker boot disk",
                f"{boot} {settings.worker_disk_gb} GB",
                settings.workers,
                disk_hourly(data, region, boot, settings.worker_disk_gb),
                fallback,
            )
        )
        lines.append(
            PriceLine(
                "worker address",
                "external IPv4",
                settings.workers,
                _pick(_region(data, region)[0].get("external_ipv4"), settings.spot),
            )
        )
    if replica_in_bucket(settings):
        lines += replica_lines(settings, data)
    return lines


def host_hourly(host: str) -> float | None:
    """The price per hour of a host the lab did not create (`hosts:` in $LAB_HOME/prices.yaml)."""
    value = (table().get("hosts") or {}).get(host)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise LabError(
            f"the price of host {host!r} in {user_table()} is not a number: {value!r}",
            hint="write USD per hour, e.g. `hosts: {gpu-box: 0.8}`",
        ) from None


def source_line() -> str:
    data = table()
    return (
        f"GCP list prices retrieved {data.get('retrieved', '?')} (toolkit/cost/prices.yaml; override in {user_table()})"
    )
