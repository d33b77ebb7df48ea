"""Reading GCP's capacity and quota answers out of the engine's output, and remembering stockouts.

A spot A100 is often simply not there: GCP answers `ZONE_RESOURCE_POOL_EXHAUSTED` (or `..._WITH_DETAILS`,
or only "does not have enough resources available"). That is worth another zone. A quota error is not:
every zone of the region shares the quota, so it is named, with where to ask for more. The texts these
patterns match are real ones, kept with their sources in tests/data/gcp_errors.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import LabError

STOCKOUT_MEMORY_S = 30 * 60  # how long a zone that had no capacity is tried last

_STOCKOUT = re.compile(
    r"ZONE_RESOURCE_POOL_EXHAUSTED(?:_WITH_DETAILS)?|does not have enough resources available"
    r"|state:STOCKOUT|reason: resource_availability",
)
_ZONE_IN_PATH = re.compile(r"zones/([a-z]+-[a-z]+\d+-[a-z])\b")
_ZONE_FIELD = re.compile(r"\bzone: ([a-z]+-[a-z]+\d+-[a-z])\b")
_QUOTA = re.compile(
    r"Quota (?:limit )?'(?P<name>[A-Za-z0-9_-]+)' (?:has been )?exceeded\.?\s+"
    r"Limit: (?P<limit>[0-9.]+)\s+(?:in region (?P<region>[a-z]+-[a-z]+\d+)|(?P<global>globally))",
)
_REGIONAL_QUOTA = re.compile(
    r"insufficient regional quota to satisfy request: resource \"(?P<name>[A-Za-z0-9_]+)\"",
)
_QUOTA_CODE = re.compile(r"\bQUOTA_EXCEEDED\b|quotaExceeded")
_QUOTA_NAME = re.compile(r"Quota '(?P<name>[A-Za-z0-9_-]+)'")


@dataclass(frozen=True)
class Stockout:
    """The zone had no capacity for the request (spot capacity, most often)."""

    zone: str | None
    zones_available: tuple[str, ...] = ()


@dataclass(frozen=True)
class Quota:
    """A quota of the project stopped the request; another zone of the region will not help."""

    name: str
    limit: str | None
    region: str | None  # None: a global quota (e.g. GPUS_ALL_REGIONS)

    def message(self, project: str) -> str:
        where = f"in region {self.region}" if self.region else "across all regions"
        limit = f" (limit {self.limit})" if self.limit is not None else ""
        link = "https://console.cloud.google.com/iam-admin/quotas" + (f"?project={project}" if project else "")
        return (
            f"GCP quota {self.name} is exhausted {where}{limit}: ask for more at {link} "
            f"(filter on {self.name}), or lower lab:workers, or pick another machine type or region"
        )


def classify(text: str) -> Stockout | Quota | None:
    """What an engine failure says about capacity: a stockout, a quota, or neither (None)."""
    if found := _QUOTA.search(text):
        limit = found.group("limit")
        return Quota(name=found.group("name"), limit=limit, region=found.group("region"))
    if found := _REGIONAL_QUOTA.search(text):
        region = re.search(r"in region ([a-z]+-[a-z]+\d+)", text)
        return Quota(name=found.group("name"), limit=None, region=region.group(1) if region else None)
    if _STOCKOUT.search(text):
        zone = _ZONE_IN_PATH.search(text) or _ZONE_FIELD.search(text)
        available = re.search(r"zonesAvailable: ([a-z0-9,-]+)", text)
        return Stockout(
            zone=zone.group(1) if zone else None,
            zones_available=tuple(available.group(1).split(",")) if available else (),
        )
    if _QUOTA_CODE.search(text):
        named = _QUOTA_NAME.search(text)
        return Quota(name=named.group("name") if named else "unknown", limit=None, region=None)
    return None


class StockoutMemory:
    """Zones that recently had no capacity, kept in a small JSON file: {zone: unix time of the stockout}."""

    def __init__(self, path: Path, *, keep_s: float = STOCKOUT_MEMORY_S) -> None:
        self.path = path
        self.keep_s = keep_s

    def _read(self) -> dict[str, float]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(raw, dict):
            return {}
        return {str(zone): float(at) for zone, at in raw.items() if isinstance(at, int | float)}

    def recent(self, now: float | None = None) -> dict[str, float]:
        """Zones with a stockout within the memory window, and when it was seen."""
        now = time.time() if now is None else now
        return {zone: at for zone, at in self._read().items() if now - at < self.keep_s}

    def remember(self, zone: str, now: float | None = None) -> None:
        seen = self.recent(now)
        seen[zone] = time.time() if now is None else now
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(seen, indent=1, sort_keys=True), encoding="utf-8")
        partial.replace(self.path)


def zones_to_try(configured: list[str], current: str | None, recent: dict[str, float]) -> list[str]:
    """The order to try zones in: where the workers already are, then the configured order with zones
    that recently had no capacity moved last (longest ago first: the likeliest to have capacity again)."""
    ordered = list(dict.fromkeys(zone for zone in configured if zone))
    fresh = [zone for zone in ordered if zone not in recent]
    stale = sorted((zone for zone in ordered if zone in recent), key=lambda zone: recent[zone])
    zones = fresh + stale
    if current and current in zones:
        zones.remove(current)
        zones.insert(0, current)
    return zones


def no_capacity_message(tried: list[str], fallback_on_demand: bool) -> LabError:
    zones = ", ".join(dict.fromkeys(tried)) or "none"
    if fallback_on_demand:
        return LabError(
            f"no zone had capacity for the workers, spot or on-demand (tried {zones})",
            hint="try again later, or add zones to lab:zones, or pick another lab:workerMachineType",
        )
    return LabError(
        f"no zone had spot capacity for the workers (tried {zones})",
        hint="try again later, add zones to lab:zones, or pass --fallback-on-demand to use standard VMs",
    )
