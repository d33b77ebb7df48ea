"""Issue 24, breakage 5: the tracker's stop fits GCE's shutdown window.

GCE powers a standard VM off 90 s after the stop request, whatever its guest is doing
(https://cloud.google.com/compute/docs/shutdownscript, "Limitations": "On-demand instances: 90 seconds after you stop
or delete an instance"). On stop, systemd stops units in the reverse of their start order (systemd.unit(5),
Before=/After=: "When two units with an ordering dependency between them are shut down, the inverse of the start-up
order is applied"), each within its TimeoutStopSec (systemd's DefaultTimeoutStopSec, 90 s, when a unit names none:
systemd-system.conf(5)). So the worst case is the longest path of stop budgets through the ordering graph of the
tracker's units. This reads the real unit templates and the role's defaults (the one place the budgets are written),
sums that path against the window, and then plays the worst case on the timed Compute stand-in, which powers the VM
off at the window's end: the final backup must be done before that."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.gcp.fake_gcp_api import SHUTDOWN_WINDOW_S, Step
from toolkit.gcp import api as gcp_api

ROLE = Path(__file__).resolve().parents[2] / "playbooks" / "roles" / "lab_tracker"
SYSTEMD_DEFAULT_TIMEOUT_STOP_S = 90.0  # systemd-system.conf(5), DefaultTimeoutStopSec=
FINAL_BACKUP = "lab-final-backup.service"


def defaults() -> dict:
    return yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())


def units() -> dict[str, dict]:
    """Each lab unit of the role: its stop budget (s) and the lab units it is ordered after / before."""
    values = defaults()
    found: dict[str, dict] = {}
    for path in sorted((ROLE / "templates").glob("lab-*.service.j2")):
        text = path.read_text()
        if "[Service]" not in text:
            continue
        name = path.name.removesuffix(".j2")
        budget = SYSTEMD_DEFAULT_TIMEOUT_STOP_S
        if match := re.search(r"^TimeoutStopSec=(.+)$", text, re.M):
            raw = match.group(1).strip()
            var = re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", raw)
            budget = float(values[var.group(1)] if var else raw)
        ordering = {"After": set(), "Before": set()}
        for key, value in re.findall(r"^(After|Before)=(.+)$", text, re.M):
            ordering[key] |= {u for u in value.split() if u.startswith("lab-")}
        found[name] = {"budget": budget, **ordering}
    return found


def stop_paths(found: dict[str, dict]) -> list[list[str]]:
    """Every chain of units that stop one after another (A After B: A stops before B)."""
    first_then: dict[str, set[str]] = {name: set() for name in found}
    for name, unit in found.items():
        for other in unit["After"] & set(found):
            first_then[name].add(other)
        for other in unit["Before"] & set(found):
            first_then[other].add(name)

    def from_(name: str) -> list[list[str]]:
        nexts = first_then[name]
        return [[name]] if not nexts else [[name, *rest] for n in nexts for rest in from_(n)]

    return [path for name in found for path in from_(name)]


def test_the_longest_stop_chain_of_the_real_units_fits_the_window():
    values, found = defaults(), units()
    window = float(values.get("lab_tracker_shutdown_window", SHUTDOWN_WINDOW_S["standard"]))
    assert window == SHUTDOWN_WINDOW_S["standard"], "the role's window is GCE's for a standard VM (the tracker)"
    assert {"lab-sweep@.service", "lab-mlflow.service", FINAL_BACKUP, "lab-replica.service"} <= set(found)
    unbudgeted = [name for name, unit in found.items() if unit["budget"] == SYSTEMD_DEFAULT_TIMEOUT_STOP_S]
    assert not unbudgeted, f"these units fall back to systemd's 90 s stop timeout: {unbudgeted}"
    margin = float(values.get("lab_tracker_shutdown_margin", 0))
    worst = max(stop_paths(found), key=lambda path: sum(found[n]["budget"] for n in path))
    total = sum(found[n]["budget"] for n in worst)
    assert worst[0] == "lab-sweep@.service" and worst[-1] in (FINAL_BACKUP, "lab-replica.service"), worst
    assert total + margin <= window, f"{' -> '.join(worst)}: {total:.0f} s + {margin:.0f} s margin > {window:.0f} s"


def test_the_final_backup_finishes_before_the_stand_in_powers_the_tracker_off(fake_gcp):
    """The worst case on the timed Compute stand-in: every step of the longest chain that ends in the final backup
    takes its whole budget; the VM is powered off at the window's end whatever it is doing, and the backup is done."""
    found = units()
    chain = max(
        (path for path in stop_paths(found) if path[-1] == FINAL_BACKUP),
        key=lambda path: sum(found[n]["budget"] for n in path),
    )
    uploaded: list[str] = []
    steps = [Step(name, found[name]["budget"]) for name in chain[:-1]]
    steps.append(Step(FINAL_BACKUP, found[FINAL_BACKUP]["budget"], lambda: uploaded.append("backup")))
    steps.append(Step("the system's own shutdown", float(defaults().get("lab_tracker_shutdown_margin", 0))))
    fake_gcp.add("lab-dev-tracker", shutdown=steps)
    assert gcp_api.stop_instance("my-gcp-project", "us-central1-a", "lab-dev-tracker") is True
    tracker = fake_gcp.instances["lab-dev-tracker"]
    assert tracker.status == "TERMINATED"
    assert uploaded == ["backup"] and FINAL_BACKUP in tracker.shut_down, f"cut at the window: {tracker.shut_down}"
    assert not tracker.cut, f"{' -> '.join(s.name for s in steps)} outlasts the {tracker.window_s:.0f}-s window"
