"""Refreshing the price table: Catalog SKUs (in the Cloud Billing Catalog API's documented shape,
https://cloud.google.com/billing/docs/reference/rest/v1/services.skus/list) become the table's parts."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml

from toolkit.cost import price_refresh, prices


def sku(description: str, units: int, nanos: int, regions=("us-central1",), usage="OnDemand") -> dict:
    return {
        "description": description,
        "category": {"serviceDisplayName": "Compute Engine", "usageType": usage},
        "serviceRegions": list(regions),
        "pricingInfo": [
            {
                "pricingExpression": {
                    "usageUnit": "h",
                    "tieredRates": [
                        {
                            "startUsageAmount": 0,
                            "unitPrice": {"currencyCode": "USD", "units": str(units), "nanos": nanos},
                        }
                    ],
                }
            }
        ],
    }


SKUS = [
    sku("A2 Instance Core running in Americas", 0, 31611000),
    sku("A2 Instance Ram running in Americas", 0, 4237000),
    sku("Spot Preemptible A2 Instance Core running in Americas", 0, 12640000, usage="Preemptible"),
    sku("Spot Preemptible A2 Instance Ram running in Americas", 0, 1695000, usage="Preemptible"),
    sku("Nvidia Tesla A100 GPU running in Americas", 2, 933908000),
    sku("Spot Preemptible Nvidia Tesla A100 GPU running in Americas", 0, 980000000, usage="Preemptible"),
    sku("Commitment v1: A2 Cpu in Americas for 1 Year", 0, 19915000, usage="Commit1Yr"),
    sku("SSD backed PD Capacity", 0, 170000000, regions=("us-central1", "europe-west4")),  # per GiB-month
    sku("Nvidia Tesla A100 GPU running in EMEA", 3, 0, regions=("europe-west4",)),
    sku("Licensing Fee for Windows Server", 0, 46000000),
]


def test_skus_become_the_tables_parts():
    table = price_refresh.regions_from(SKUS, ["us-central1"])
    prices_here = table["us-central1"]
    assert prices_here["series"]["a2"] == {"vcpu": [0.031611, 0.01264], "memory": [0.004237, 0.001695]}
    assert prices_here["gpus"]["nvidia-tesla-a100"] == [2.933908, 0.98]
    assert prices_here["disks"]["pd-ssd"] == 0.17
    assert "europe-west4" not in table


def test_a_refreshed_table_prices_machines(isolated):
    output = isolated / ".lab" / "prices.yaml"
    price_refresh.write(output, price_refresh.regions_from(SKUS, ["us-central1"]), dt.date(2026, 11, 22))
    written = yaml.safe_load(output.read_text())
    assert written["retrieved"] == "2026-11-22"
    table = prices.table()  # the packaged table with the refreshed one laid over it
    assert prices.machine_hourly(table, "us-central1", "a2-highgpu-1g", spot=False) == pytest.approx(3.673385)
    assert prices.machine_hourly(table, "us-central1", "a2-highgpu-1g", spot=True) == pytest.approx(
        12 * 0.01264 + 85 * 0.001695 + 0.98
    )


def test_refresh_needs_an_api_key(capsys):
    with pytest.raises(SystemExit) as stopped:
        price_refresh.main([])
    assert stopped.value.code == 2
    assert "--api-key" in capsys.readouterr().err
