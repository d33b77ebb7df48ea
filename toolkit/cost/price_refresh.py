"""Refresh the price table from GCP's Cloud Billing Catalog API (the SKUs behind the pricing pages).

    python -m toolkit.cost.price_refresh --api-key KEY [--region us-central1 ...] [--output PATH]

writes the `regions:` part of a price table (by default $LAB_HOME/prices.yaml, which `lab cost` lays over
the packaged one) with today's date. An API key with the Cloud Billing API enabled is enough; no project
access is needed. Only the SKUs the table uses are read: per-series vCPU and memory (standard and spot),
the GPUs, persistent disks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from toolkit.config import paths
from toolkit.errors import LabError

COMPUTE_SERVICE = "6F81-5844-456A"  # Compute Engine in the Cloud Billing Catalog
CATALOG = f"https://cloudbilling.googleapis.com/v1/services/{COMPUTE_SERVICE}/skus"

# SKU descriptions -> (section, key, part). "Spot Preemptible " in front marks the spot price.
_SERIES = re.compile(r"^(?P<series>A2|G2|N1 Predefined|N2|E2) Instance (?P<part>Core|Ram) running in ")
_GPU = re.compile(r"^Nvidia (?P<name>.+?) GPU running in ")
_DISK = {
    "SSD backed PD Capacity": "pd-ssd",
    "Balanced PD Capacity": "pd-balanced",
    "Storage PD Capacity": "pd-standard",
}
GPU_NAMES = {
    "Tesla A100": "nvidia-tesla-a100",
    "A100 80GB": "nvidia-a100-80gb",
    "L4": "nvidia-l4",
    "Tesla T4": "nvidia-tesla-t4",
    "Tesla V100": "nvidia-tesla-v100",
    "Tesla P100": "nvidia-tesla-p100",
    "Tesla P4": "nvidia-tesla-p4",
}


def unit_price(sku: dict[str, Any]) -> float | None:
    """The SKU's price per unit (the last tier: what a lab running for hours pays)."""
    try:
        rates = sku["pricingInfo"][0]["pricingExpression"]["tieredRates"]
        money = rates[-1]["unitPrice"]
    except (KeyError, IndexError, TypeError):
        return None
    return int(money.get("units", 0) or 0) + int(money.get("nanos", 0) or 0) / 1e9


def regions_from(skus: Iterable[dict[str, Any]], regions: list[str]) -> dict[str, Any]:
    """The `regions:` part of a price table from Catalog SKUs (standard and spot, per region)."""
    table: dict[str, Any] = {region: {"series": {}, "gpus": {}, "disks": {}} for region in regions}
    for sku in skus:
        description = str(sku.get("description", ""))
        spot = description.startswith("Spot Preemptible ")
        name = description.removeprefix("Spot Preemptible ")
        price = unit_price(sku)
        if price is None or sku.get("category", {}).get("usageType") == "Commit1Yr":
            continue
        for region in set(sku.get("serviceRegions", [])) & set(regions):
            prices = table[region]
            if found := _SERIES.match(name):
                series = found.group("series").split()[0].lower()
                part = "vcpu" if found.group("part") == "Core" else "memory"
                pair = prices["series"].setdefault(series, {}).setdefault(part, [None, None])
                pair[1 if spot else 0] = round(price, 6)
            elif (found := _GPU.match(name)) and found.group("name") in GPU_NAMES:
                pair = prices["gpus"].setdefault(GPU_NAMES[found.group("name")], [None, None])
                pair[1 if spot else 0] = round(price, 6)
            elif name in _DISK and not spot:
                prices["disks"][_DISK[name]] = round(price, 6)
    return table


def catalog_skus(api_key: str) -> Iterator[dict[str, Any]]:
    """Every Compute Engine SKU, page by page (USD)."""
    token = ""
    while True:
        query = {"key": api_key, "currencyCode": "USD", "pageSize": "5000"}
        if token:
            query["pageToken"] = token
        url = f"{CATALOG}?{urllib.parse.urlencode(query)}"
        try:
            with urllib.request.urlopen(url, timeout=60) as answer:  # noqa: S310 - a fixed https URL
                page = json.load(answer)
        except OSError as exc:
            raise LabError(f"the Cloud Billing Catalog API did not answer: {exc}", hint="check the API key") from None
        yield from page.get("skus", [])
        token = page.get("nextPageToken", "")
        if not token:
            return


def write(path: Path, regions: dict[str, Any], today: dt.date) -> None:
    import yaml

    existing: dict[str, Any] = {}
    if path.is_file():
        existing = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    existing.update({"retrieved": today.isoformat(), "regions": {**existing.get("regions", {}), **regions}})
    existing["sources"] = [f"{CATALOG} (Cloud Billing Catalog API)"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(existing, sort_keys=False), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit.cost.price_refresh", description=__doc__.splitlines()[0])
    parser.add_argument("--api-key", required=True, help="a GCP API key with the Cloud Billing API enabled")
    parser.add_argument("--region", action="append", help="a region to price (repeatable; default us-central1)")
    parser.add_argument("--output", type=Path, help="the table to write (default $LAB_HOME/prices.yaml)")
    args = parser.parse_args(argv)
    regions = args.region or ["us-central1"]
    output = args.output or paths.lab_home() / "prices.yaml"
    try:
        table = regions_from(catalog_skus(args.api_key), regions)
        write(output, table, dt.date.today())
    except LabError as exc:
        print(f"error: {exc.one_line()}")
        return 1
    print(f"wrote prices for {', '.join(regions)} to {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
