"""Capacity and quota answers, read from real GCP error texts (tests/data/gcp_errors/SOURCES.md), and the
zone order that follows from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.gcp import capacity

ERRORS = Path(__file__).resolve().parents[1] / "data" / "gcp_errors"


def text(name: str) -> str:
    return (ERRORS / name).read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("name", "zone"),
    [
        ("stockout-waiting-for-instance.txt", "us-west1-c"),
        ("stockout-with-details.txt", "us-central1-b"),
        ("stockout-resource-type.txt", "us-east1-c"),
        ("stockout-operation.txt", "us-central1-a"),
    ],
)
def test_stockouts_are_read_with_their_zone(name, zone):
    found = capacity.classify(text(name))
    assert isinstance(found, capacity.Stockout)
    assert found.zone == zone


def test_a_stockout_with_details_names_the_zones_that_have_capacity():
    found = capacity.classify(text("stockout-with-details.txt"))
    assert found.zones_available == ("us-central1-a", "us-central1-f")


@pytest.mark.parametrize(
    ("name", "quota", "region"),
    [
        ("quota-region.txt", "CPUS", "us-east1"),
        ("quota-global.txt", "GPUS_ALL_REGIONS", None),
        ("quota-insufficient-regional.txt", "CPUS", None),
        ("quota-code-only.txt", "N2_CPUS", None),
    ],
)
def test_quotas_are_read_with_their_name_and_region(name, quota, region):
    found = capacity.classify(text(name))
    assert isinstance(found, capacity.Quota)
    assert (found.name, found.region) == (quota, region)


def test_a_quota_message_says_where_to_ask_for_more():
    found = capacity.classify(text("quota-region.txt"))
    message = found.message("my-gcp-project")
    assert "CPUS" in message and "us-east1" in message and "limit 8.0" in message
    assert "https://console.cloud.google.com/iam-admin/quotas?project=my-gcp-project" in message
    assert "\n" not in message
    assert "all regions" in capacity.classify(text("quota-global.txt")).message("p")


def test_other_errors_are_neither_stockout_nor_quota():
    assert capacity.classify(text("not-capacity-accelerator-not-found.txt")) is None
    assert capacity.classify("error: googleapi: Error 400: Invalid value for field 'resource.machineType'") is None


def test_stockouts_are_remembered_for_a_while(tmp_path):
    memory = capacity.StockoutMemory(tmp_path / "stockouts.json", keep_s=600)
    memory.remember("us-central1-a", now=1000.0)
    memory.remember("us-central1-b", now=1300.0)
    assert memory.recent(now=1500.0) == {"us-central1-a": 1000.0, "us-central1-b": 1300.0}
    assert memory.recent(now=1700.0) == {"us-central1-b": 1300.0}, "forgotten after keep_s"
    # A second memory over the same file (the next `lab up`) sees the same thing.
    assert capacity.StockoutMemory(tmp_path / "stockouts.json", keep_s=600).recent(now=1700.0) == {
        "us-central1-b": 1300.0
    }


def test_a_damaged_memory_file_is_an_empty_memory(tmp_path):
    path = tmp_path / "stockouts.json"
    path.write_text("{not json", encoding="utf-8")
    memory = capacity.StockoutMemory(path)
    assert memory.recent() == {}
    memory.remember("us-central1-c")
    assert list(memory.recent()) == ["us-central1-c"]


def test_zone_order():
    zones = ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"]
    assert capacity.zones_to_try(zones, None, {}) == zones
    # Recent stockouts go last, the oldest of them first.
    recent = {"us-central1-a": 200.0, "us-central1-b": 100.0}
    assert capacity.zones_to_try(zones, None, recent) == [
        "us-central1-c",
        "us-central1-f",
        "us-central1-b",
        "us-central1-a",
    ]
    # Where the workers already run comes first, stockout or not.
    assert capacity.zones_to_try(zones, "us-central1-a", recent)[0] == "us-central1-a"
    assert capacity.zones_to_try(zones, "europe-west4-a", {}) == zones, "a zone not configured is not tried"


def test_no_capacity_message_names_each_zone_once():
    message = capacity.no_capacity_message(["a", "b", "a", "b"], fallback_on_demand=True).one_line()
    assert "tried a, b)" in message
    assert "--fallback-on-demand" in capacity.no_capacity_message(["a"], fallback_on_demand=False).one_line()
