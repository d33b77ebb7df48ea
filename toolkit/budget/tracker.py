"""The budget guard on the tracker of an ssh or gcp lab (`lab-budget-guard.service`, as root: `python -m
toolkit.budget.guard tracker --data /srv/lab --state /var/lib/lab/guard --user lab-tracker`). `lab up` hands it the
budget (`<state>/budget.json`: the limits, the ledger and the uptime periods, `handed`) in the guard's own folder,
which only root writes; it reads the workers from /etc/lab/tracker.json (root's).

Root trusts nothing the tracker's service user can write: the guard's inputs are root's, its HOME is its own folder
(so no credentials file of that user reaches google.auth), and what it does in that user's folders (the budget's
line for `lab sweep watch`, a line in a sweep's log) or with that user's SSH key (stopping an ssh lab's workers) it
does as that user, in a child process (`toolkit.budget.tracker_user`). It finds the running sweeps from systemd.

When the lab must stop: the detached sweeps stop as `lab sweep stop` stops them (`systemctl stop
lab-sweep@NAME.service`: SIGINT, running trials interrupted and queued), a verified snapshot is taken (`systemctl
start lab-backup.service`, the tracker agent's backup), then the workers stop: on gcp their VMs, through the
Compute API (`toolkit.gcp.api.stop_instance`) with the tracker's own service account, whose role allows
instances.stop; on ssh the lab's services on each worker (as playbooks/stop.yml stops them), over the tracker's
own SSH key and the workers' pinned host keys. The tracker itself stays up: it is the lab's memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from toolkit.budget import ledger
from toolkit.budget.guard import Place, Say
from toolkit.budget.guard import say as guard_say
from toolkit.budget.spend import OK, Limits, Verdict, decide
from toolkit.cost import uptime
from toolkit.errors import LabError

DATA = Path("/srv/lab")
STATE = Path("/var/lib/lab/guard")  # the guard's own folder (root:root 0700)
FACTS = Path("/etc/lab/tracker.json")
AS_USER_TIMEOUT_S = 600  # a child's work as the tracker user (stopping the workers over SSH)
FILE = "budget.json"
SWEEP_UNITS = "lab-sweep@*.service"
BACKUP_UNIT = "lab-backup.service"
WORKER_UNITS = ("lab-idle.timer", "lab-jupyter.service")  # playbooks/stop.yml's lab_stop_worker_units
SYSTEMCTL_TIMEOUT_S = 300


def handed(limits: Limits, kept: ledger.Ledger, periods: list[uptime.Period], gcp: Any = None) -> dict[str, Any]:
    """What `lab up` hands the tracker's guard: the limits, the ledger, the uptime, and on gcp the workers' VMs."""
    return {
        "ledger": kept.as_dict(),
        "limits": limits.as_dict(),
        **uptime.document(periods),
        "gcp": gcp,
        "handed": time.time(),
    }


def systemctl(*args: str, timeout: float = SYSTEMCTL_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False, timeout=timeout)


class TrackerPlace(Place):
    def __init__(
        self,
        data: Path,
        state: Path = STATE,
        user: str | None = None,
        facts: Path = FACTS,
        python: tuple[str, str | None] | None = None,
    ) -> None:
        self.python = python or (sys.executable, None)  # the child's interpreter and PYTHONPATH (tracker_user.run_as)
        self.sweeps_root = data
        self.ledger_path = state / FILE
        self.facts_path = facts
        self.user = user
        self.published: tuple[str, str] | None = None

    def _handed(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.ledger_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return raw if isinstance(raw, dict) else {}

    def verdict(self) -> Verdict:
        try:
            return self._verdict(self._handed())
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise LabError(
                f"the budget `lab up` handed the guard ({self.ledger_path}) is malformed: {type(exc).__name__}: {exc}",
                hint="run `lab up` again",
            ) from None

    def _verdict(self, raw: dict[str, Any]) -> Verdict:
        limits = Limits(**raw["limits"]) if raw.get("limits") else Limits(None, "up", None)
        now = time.time()
        if raw.get("ledger", {}).get("fired"):  # stopped already: nothing to do until the next `lab up`
            found = decide(limits, ledger.read(self.ledger_path), uptime.parse(raw), now)
            return Verdict(OK, found.spend_usd, found.budget_usd, found.since, found.hours, found.max_hours, "")
        return decide(limits, ledger.read(self.ledger_path), uptime.parse(raw), now)

    def running_sweeps(self) -> list[str]:
        """From systemd (their units), not from files in the tracker user's folders."""
        listed = systemctl("list-units", "--state=active", "--plain", "--no-legend", SWEEP_UNITS)
        units = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
        return [unit.removeprefix("lab-sweep@").removesuffix(".service") for unit in units]

    def note_sweeps(self, names: list[str], text: str) -> None:
        if names:
            try:
                self.as_user("note", "--data", str(self.sweeps_root), "--text", text, *names)
            except LabError as exc:  # a line the sweeps miss never keeps the guard from stopping the lab
                guard_say(f"warning: the sweeps' logs were not told: {exc.one_line()}")

    def publish(self, found: Verdict) -> None:
        shown = (found.state, found.line() if found.state != OK else "")
        if shown == self.published and found.state == OK:  # all well, and said so: no child process each look
            return
        try:
            self.as_user(
                "publish", "--data", str(self.sweeps_root), "--state", found.state, "--line", shown[1],
                "--reason", found.reason,
            )  # fmt: skip
        except LabError as exc:  # `lab sweep watch` misses the line; the guard still looks, and stops the lab
            guard_say(f"warning: the budget's line for `lab sweep watch` was not written: {exc.one_line()}")
            return
        self.published = shown

    def as_user(self, *args: str) -> list[str]:
        """Run `toolkit.budget.tracker_user` with `args` as the tracker's service user; the lines it hands back."""
        from toolkit.budget import tracker_user

        user = self.user or owner_of(self.sweeps_root)
        return tracker_user.run_as(user, list(args), AS_USER_TIMEOUT_S, guard_say, self.python)

    def tracking_uri(self) -> str | None:
        return self.facts().get("mlflow_url")

    def stop(self, say: Say) -> list[str]:
        did = [self.snapshot(say)]
        gcp = self._handed().get("gcp")
        if gcp and gcp.get("workers"):
            return did + stop_vms(gcp, say)
        say("stopping the lab's services and trials on the workers, over the tracker's own key")
        try:
            return did + self.as_user("stop-workers", "--facts", str(self.facts_path))
        except LabError as exc:  # recorded in the ledger as what happened, never an exit before the record
            return [*did, f"the workers were not stopped: {exc.one_line()}"]

    def stop_sweeps(self, say: Say) -> str:
        listed = systemctl("list-units", "--state=active", "--plain", "--no-legend", SWEEP_UNITS)
        units = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
        if units:  # one transaction: systemd stops them all at once, so none hands out a trial while another stops
            say(f"stopping {', '.join(units)} as Ctrl-C does (`lab sweep stop`)")
            stopped = systemctl("stop", *units)
            if stopped.returncode != 0:
                say(f"warning: {' '.join(units)} did not all stop: {stopped.stderr.strip()}")
        return f"sweeps stopped as `lab sweep stop` does: {', '.join(units) or 'none'}"

    def snapshot(self, say: Say) -> str:
        say(f"taking a verified snapshot ({BACKUP_UNIT})")
        done = systemctl("start", BACKUP_UNIT)
        if done.returncode != 0:
            return f"the snapshot failed ({BACKUP_UNIT}: {done.stderr.strip()}); the replica still holds every write"
        return f"verified snapshot taken ({BACKUP_UNIT})"


def owner_of(folder: Path) -> str:
    import pwd

    return pwd.getpwuid(folder.stat().st_uid).pw_name


def stop_vms(gcp: dict[str, Any], say: Say) -> list[str]:
    """gcp: stop each worker's VM through the Compute API (instances.stop), with the tracker's service account, and
    wait for each stop's operation (the guest's shutdown: up to 30 s for a spot VM, 90 s for an on-demand one)."""
    from toolkit.gcp import api

    did = []
    for worker in gcp["workers"]:
        name, zone = str(worker["instance"]), str(worker["zone"])
        say(f"stopping the VM {name} ({zone}) through the Compute API")
        try:
            found = api.stop_instance(str(gcp["project"]), zone, name)
            did.append(f"worker {worker['name']}: VM {name} stopped" if found else f"worker VM {name} does not exist")
        except api.StillRunning:  # GCP took the stop, and its guest is still shutting down: it powers off in time
            did.append(f"worker {worker['name']}: VM {name} is stopping (GCP's stop operation is still running)")
        except LabError as exc:
            did.append(f"worker {worker['name']}: VM {name} did not stop: {exc.one_line()}")
    return did


def stop_worker_services(facts: dict[str, Any], say: Say) -> list[str]:
    """ssh: stop the lab's services and trials on each worker, as playbooks/stop.yml does, over the tracker's key."""
    from toolkit.hosts import ssh as remote

    did = []
    for worker in facts.get("workers") or []:
        access = remote.Access(
            user=str(worker["user"]), key=Path(facts["ssh_key"]), known_hosts=Path(facts["known_hosts"]), strict=True
        )
        host = remote.Host(str(worker["name"]), str(worker["address"]), remote.WORKER)
        say(f"stopping the lab's services and trials on {host.name} ({host.address})")
        command = ["sudo", "-n", "systemctl", "stop", *WORKER_UNITS]
        try:
            stopped = remote.run(access, host, command, check=False, timeout=120)
            remote.run(access, host, ["pkill", "-INT", "-f", "papermill"], check=False, timeout=60)
        except LabError as exc:
            did.append(f"worker {host.name}: not reached: {exc.one_line()}")
            continue
        if stopped.returncode == 0:
            did.append(f"worker {host.name}: {', '.join(WORKER_UNITS)} stopped, trials ended")
        else:
            did.append(f"worker {host.name}: services did not stop: {stopped.stderr.strip()[-200:]}")
    return did
