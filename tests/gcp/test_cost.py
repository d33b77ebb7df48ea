"""The price table applied to stacks, uptime periods, and `lab cost` of a gcp lab (no cloud needed: the
uptime is what `lab up`/`lab down` record)."""

from __future__ import annotations

import json
import time

import pytest

from tests.gcp.pulumi_fakes import GCP_STACK, gcp_settings
from toolkit.config import schema
from toolkit.cost import prices, uptime


def settings(**extra) -> schema.Settings:
    return gcp_settings(**extra)


def by_resource(lines):
    return {line.resource: line for line in lines}


def test_an_a100_worker_is_priced_as_gcp_bills_it():
    table = prices.table()
    # GCP's on-demand a2-highgpu-1g in us-central1: 12 vCPUs + 85 GiB + one A100 40GB.
    assert prices.machine_hourly(table, "us-central1", "a2-highgpu-1g", spot=False) == pytest.approx(3.673385)
    assert prices.machine_hourly(table, "us-central1", "e2-standard-2", spot=False) == pytest.approx(0.067006)
    assert prices.machine_hourly(table, "us-central1", "n1-standard-8", spot=False) == pytest.approx(0.379998)
    spot = prices.machine_hourly(table, "us-central1", "a2-highgpu-1g", spot=True)
    assert 0 < spot < 0.5 * 3.673385, "spot is the discounted price"


def test_stack_lines_scale_with_workers_and_spot():
    two_spot = by_resource(prices.hourly(settings(**{"lab:workers": 2})))
    assert two_spot["worker"].count == 2 and "spot" in two_spot["worker"].item
    assert two_spot["worker boot disk"].unit_usd_per_hour == pytest.approx(150 * 0.17 / 730)
    assert two_spot["tracker"].item == "e2-standard-2 (standard)", "the tracker is never spot"
    standard = by_resource(prices.hourly(settings(**{"lab:workers": 2, "lab:spot": False})))
    assert standard["worker"].usd_per_hour > two_spot["worker"].usd_per_hour
    none = by_resource(prices.hourly(settings(**{"lab:workers": 0})))
    assert "worker" not in none and "tracker" in none


def test_a_hyperdisk_only_series_is_priced_with_its_hyperdisk_boot_disk():
    lines = by_resource(prices.hourly(settings(**{"lab:workerMachineType": "a3-ultragpu-8g"})))
    assert lines["worker boot disk"].item == "hyperdisk-balanced 150 GB"
    assert lines["worker boot disk"].unit_usd_per_hour == pytest.approx(150 * 0.08 / 730)


def test_n1_workers_pay_for_their_attached_gpus():
    lines = by_resource(
        prices.hourly(
            settings(
                **{
                    "lab:workerMachineType": "n1-standard-8",
                    "lab:workerGpu": "nvidia-tesla-t4",
                    "lab:workerGpuCount": 2,
                    "lab:workers": 3,
                    "lab:spot": False,
                }
            )
        )
    )
    assert lines["worker GPU"].count == 6 and lines["worker GPU"].unit_usd_per_hour == pytest.approx(0.35)
    s = settings(
        **{
            "lab:workerMachineType": "n1-standard-8",
            "lab:workerGpu": "nvidia-tesla-t4",
            "lab:workerGpuCount": 2,
            "lab:spot": False,
        }
    )
    assert prices.worker_hourly(s) == pytest.approx(0.379998 + 2 * 0.35)


def test_unknown_prices_and_regions_say_so():
    lines = by_resource(prices.hourly(settings(**{"lab:workerMachineType": "a3-highgpu-1g"})))
    assert lines["worker"].usd_per_hour is None
    assert "$LAB_HOME/prices.yaml" in lines["worker"].describe()
    elsewhere = settings(**{"gcp:region": "europe-west4", "gcp:zone": "europe-west4-a"})
    assert "priced as us-central1" in by_resource(prices.hourly(elsewhere))["worker"].describe()


def test_a_table_in_lab_home_overrides_the_packaged_one(isolated):
    (isolated / ".lab").mkdir(exist_ok=True)
    (isolated / ".lab" / "prices.yaml").write_text(
        "regions:\n  us-central1:\n    gpus:\n      nvidia-tesla-a100: [2.9, 0.5]\nhosts: {gpu-box: 0.8}\n"
    )
    s = settings()
    table = prices.table()
    assert prices.machine_hourly(table, "us-central1", "a2-highgpu-1g", spot=True) == pytest.approx(
        12 * 0.01264 + 85 * 0.001695 + 0.5
    )
    assert prices.machine_hourly(table, "us-central1", "e2-standard-2", spot=False) == pytest.approx(0.067006)
    assert prices.worker_hourly(s) == pytest.approx(12 * 0.01264 + 85 * 0.001695 + 0.5)
    assert prices.host_hourly("gpu-box") == 0.8 and prices.host_hourly("other") is None


def test_a_broken_override_is_one_clear_error(isolated):
    (isolated / ".lab").mkdir(exist_ok=True)
    (isolated / ".lab" / "prices.yaml").write_text("hosts: [unclosed\n")
    with pytest.raises(prices.LabError, match="cannot read the price table"):
        prices.table()


def test_uptime_periods(isolated):
    lines = prices.hourly(settings(**{"lab:workers": 1}))
    uptime.record_up("dev", lines, now=1000.0)
    uptime.record_up("dev", lines, now=1500.0)  # an up that changed nothing continues the period
    assert len(uptime.periods("dev")) == 1
    more = prices.hourly(settings(**{"lab:workers": 3}))
    uptime.record_up("dev", more, now=4600.0)  # more workers: a new period from now
    uptime.record_down("dev", now=8200.0)
    first, second = uptime.periods("dev")
    assert (first.up, first.down, second.up, second.down) == (1000.0, 4600.0, 4600.0, 8200.0)
    assert first.cost() == pytest.approx(sum(line.usd_per_hour for line in lines))  # one hour
    assert second.cost() == pytest.approx(sum(line.usd_per_hour for line in more))
    assert uptime.current("dev") is None
    uptime.record_down("dev", now=9000.0)  # a second down changes nothing
    assert uptime.periods("dev")[-1].down == 8200.0


def test_lab_cost_of_a_gcp_lab_that_is_up(lab, isolated):
    # The shipped dev stack (gcp, one spot A100 worker), up for two hours according to `lab up`'s record.
    from toolkit.config import stack

    _, resolution = stack.load("dev", target="gcp")
    lines = prices.hourly(resolution.settings)
    uptime.record_up("dev", lines, now=time.time() - 7200)
    ran = lab("cost", "--target", "gcp", "--json")
    assert ran.code == 0, ran.err
    document = json.loads(ran.out)
    hourly = sum(line.usd_per_hour for line in lines)
    assert document["now"]["usd_per_hour"] == pytest.approx(hourly, rel=1e-4)
    assert document["now"]["usd_so_far"] == pytest.approx(2 * hourly, rel=1e-2)
    assert {r["resource"] for r in document["now"]["resources"]} >= {"tracker", "worker", "replica operations"}
    assert document["sweeps"] == [] and "not up" in document["sweeps_unreadable"]
    assert document["prices_pending"] is None
    ran = lab("cost", "--target", "gcp")
    assert ran.code == 0, ran.err
    assert "a2-highgpu-1g (spot)" in ran.out and "retrieved" in ran.out
    # A price changed while the lab is up counts from the next `lab up`, and `lab cost` says so.
    (isolated / ".lab" / "prices.yaml").write_text("hosts: {gpu-box: 0.8}\n")
    ran = lab("cost", "--target", "gcp")
    assert "prices.yaml changed after this `lab up`: its prices count from the next `lab up`" in ran.out, ran.out
    uptime.record_down("dev")
    ran = lab("cost", "--target", "gcp")
    assert "nothing priced is up now" in ran.out and "every time it was up (1 period): $" in ran.out


# -- the replica in the bucket (Litestream: an upload per sync per DB written, its compactions, the versions it
# deletes kept as noncurrent ones) ----------------------------------------------------------------------------------


def test_the_replicas_operations_are_priced_for_its_sync_interval():
    # At 250ms, each of the 2 DBs being written uploads 14,400 LTX files an hour and lists about as often, and its 3
    # compaction levels (30s, 5m, 1h: 133 runs an hour) each list and upload once (Class A) and read (Class B). GCS
    # Standard in us-central1: $0.005 per 1,000 Class A, $0.0004 per 1,000 Class B (https://cloud.google.com/storage/pricing).
    lines = by_resource(prices.hourly(settings()))
    ops = lines["replica operations"]
    class_a, class_b = 2 * (2 * 14_400 + 2 * 133), 2 * (14_400 + 133)
    assert ops.usd_per_hour == pytest.approx(class_a * 0.005 / 1000 + class_b * 0.0004 / 1000)
    assert "sync every 250ms" in ops.item and "58,132 Class A" in ops.item
    assert ops.usd_per_hour > lines["tracker"].usd_per_hour, "at 250ms the replica costs more than the tracker VM"
    kept = lines["replica old versions"]
    assert "kept 8 days" in kept.item and kept.usd_per_hour > 0 and "estimate" in kept.note


def test_a_shorter_interval_costs_more_and_a_longer_one_less():
    def replica_cost(interval: str) -> float:
        found = by_resource(prices.hourly(settings(**{"lab:replicaSyncInterval": interval})))
        return found["replica operations"].usd_per_hour + found["replica old versions"].usd_per_hour

    assert replica_cost("100ms") > replica_cost("250ms") > replica_cost("1s") > replica_cost("10s")
    assert replica_cost("1s") == pytest.approx(
        (2 * (2 * 3600 + 266) * 0.005 + 2 * (3600 + 133) * 0.0004) / 1000
        + by_resource(prices.hourly(settings(**{"lab:replicaSyncInterval": "1s"})))["replica old versions"].usd_per_hour
    )


def test_a_replica_outside_the_bucket_is_not_priced_as_gcs():
    lines = by_resource(prices.hourly(settings(**{"lab:replica": "s3://nas-replica/dev?endpoint=http://nas:9000"})))
    assert "replica operations" not in lines and "tracker" in lines


def test_the_budget_counts_the_replica_and_it_bills_on_after_the_workers_stop(isolated):
    from toolkit.budget import ledger
    from toolkit.budget.spend import spent

    lines = prices.hourly(settings())
    replica_hourly = sum(line.usd_per_hour for line in lines if line.resource.startswith("replica"))
    uptime.record_up("dev", lines, now=0.0)
    assert spent(uptime.periods("dev"), 0.0, 3600.0) == pytest.approx(sum(line.usd_per_hour for line in lines))
    # The guard stops the workers after an hour: the tracker, and with it the replica, go on.
    uptime.record_stop("dev", 3600.0, lambda line: line.resource not in ledger.STOPPED_RESOURCES)
    _, after = uptime.periods("dev")
    assert {"replica operations", "replica old versions"} <= {line.resource for line in after.lines}
    assert after.cost(7200.0) >= replica_hourly


def test_a_bad_sync_interval_is_refused_in_one_line(lab, tmp_path):
    (tmp_path / "Pulumi.yaml").write_text("name: lab\nruntime: python\n")
    body = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in {**GCP_STACK, "lab:replicaSyncInterval": "1x"}.items())
    (tmp_path / "Pulumi.dev.yaml").write_text("config:\n  lab:target: gcp\n" + body)
    ran = lab("up", "--preview", env={"LAB_PROJECT_DIR": str(tmp_path)})
    assert ran.code == 1, ran.out
    (line,) = ran.err.strip().splitlines()
    assert line.startswith("error: Pulumi.dev.yaml: lab:replicaSyncInterval: '1x' is not a sync interval from 100ms")
