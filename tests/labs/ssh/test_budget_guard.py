"""The budget guard on the tracker of an ssh lab (VM-like hosts: a tracker and a worker, configured by the real
playbooks through one `lab up`): the hosts priced at $1 a second each under `hosts:` (by address), a $30 budget.
`lab up` hands the tracker's guard (lab-budget-guard.service) the budget; it fires within a minute of the budget
being reached: a verified snapshot, the worker's lab services stopped over the tracker's own key, what it did in
its journal and in the budget it was handed; a plain `lab up` is then refused with the override named."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import LAB

pytestmark = pytest.mark.hosts

BUDGET_USD = 30
USD_PER_S = 1.0  # each host


class Site:
    def __init__(self, pool: object, tracker: object, worker: object, root: Path) -> None:
        self.pool, self.tracker, self.worker = pool, tracker, worker
        self.stack = root / "Pulumi.budget.yaml"
        self.home = root / "lab-home"
        self.home.mkdir()

    def lab(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        argv = [str(LAB), args[0], "--stack", str(self.stack), *args[1:]]
        env = {**os.environ, "LAB_HOME": str(self.home), "COLUMNS": "200"}
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)

    def on(self, host: object, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.pool.ssh(host, command, check=False, timeout=timeout)  # type: ignore[attr-defined]

    def handed(self) -> dict:
        ran = self.on(self.tracker, "sudo cat /srv/lab/budget.json")
        return json.loads(ran.stdout) if ran.returncode == 0 and ran.stdout.strip() else {}


@pytest.fixture(scope="module")
def site(host_pool, tracker_host, worker_hosts, tmp_path_factory):
    made = Site(host_pool, tracker_host, worker_hosts[0], tmp_path_factory.mktemp("budget"))
    made.stack.write_text(
        "config:\n"
        "  lab:target: ssh\n"
        f"  lab:trackerHost: {tracker_host.ip}\n"
        f"  lab:workerHosts: [{made.worker.ip}]\n"
        "  lab:sshUser: ci\n"
        f"  lab:sshPublicKeyPath: {host_pool.key}.pub\n"
        "  lab:idleMinutes: 0\n"
        f"  lab:budgetUsd: {BUDGET_USD}\n"
    )
    prices = "".join(f"  '{h.ip}': {USD_PER_S * 3600}\n" for h in (tracker_host, made.worker))
    (made.home / "prices.yaml").write_text("hosts:\n" + prices)
    ran = made.lab("up", "--json")
    assert ran.returncode == 0, f"exit {ran.returncode}\n{ran.stdout}\n{ran.stderr[-3000:]}"
    made.up = json.loads(ran.stdout)  # type: ignore[attr-defined]
    yield made
    made.on(tracker_host, "sudo rm -f /srv/lab/budget.json")  # no guard of this stack stays armed for the next
    made.lab("down", "--force")


def test_the_tracker_guard_stops_the_workers_at_the_budget(site):
    assert site.up["budget"]["budget_usd"] == BUDGET_USD, site.up.get("budget")
    handed = site.handed()
    assert handed["limits"]["budget_usd"] == BUDGET_USD and handed["periods"], handed
    up_at = handed["periods"][-1]["up"]
    reached_at = max(up_at + BUDGET_USD / (2 * USD_PER_S), handed["handed"])
    deadline = reached_at + 120
    while not (fired := site.handed().get("ledger", {}).get("fired")):
        assert time.time() < deadline, site.on(site.tracker, "sudo journalctl -u lab-budget-guard -n 50").stdout
        time.sleep(2)
    assert fired["at"] - reached_at <= 60, f"fired {fired['at'] - reached_at:.1f} s after the budget was reached"
    assert fired["budget"] and f"the budget of ${BUDGET_USD:.2f} is spent" in fired["reason"], fired
    assert "verified snapshot taken (lab-backup.service)" in fired["did"], fired["did"]
    assert "worker worker-1: lab-idle.timer, lab-jupyter.service stopped, trials ended" in fired["did"], fired["did"]

    jupyter = site.on(site.worker, "systemctl is-active lab-jupyter.service").stdout.strip()
    assert jupyter in ("inactive", "failed"), jupyter
    journal = site.on(site.tracker, "sudo journalctl -u lab-budget-guard --no-pager").stdout
    assert "the budget guard stopped the lab: the budget of $30.00 is spent" in journal, journal[-2000:]
    tracker_units = site.on(site.tracker, "systemctl is-active lab-mlflow.service").stdout.strip()
    assert tracker_units == "active", "the tracker keeps serving: it is the lab's memory"

    refused = site.lab("up")
    assert refused.returncode == 1, refused.stdout
    assert "the budget is spent" in refused.stderr and "--budget USD" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
