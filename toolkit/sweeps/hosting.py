"""Where a lab's detached sweeps live and how the command line reaches them (`toolkit.sweeps.service` runs there).

`LocalSweeps`: this machine, under the stack's folder; a sweep is a process of its own. `TrackerSweeps`: the
tracker of an ssh or gcp lab, under its data folder, as the tracker's user; a sweep is the systemd unit
`lab-sweep@<name>.service` (its stop is Ctrl-C: SIGINT, running trials interrupted and queued). Both answer the
same calls, so the `lab sweep` commands never ask which one they have.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.errors import LabError
from toolkit.hosts import ssh as remote
from toolkit.sweeps import service

Say = Callable[[str], None]
MODULE = ["-m", "toolkit.sweeps.service"]
UNIT = "lab-sweep@{name}.service"
TRACKER_PYTHON = "/opt/lab/venv/bin/python"
NOT_RUNNING = 3  # the service's `stop` exit code when the sweep was not running


class SweepHost:
    """What the `lab sweep` commands ask of the place a lab's sweeps live."""

    where: str

    def command(self, *args: str) -> list[str]:
        """The argv that runs `python -m toolkit.sweeps.service ARGS --root ROOT` where the sweeps live."""
        raise NotImplementedError

    def submit(self, name: str, data: bytes) -> None:
        result = subprocess.run(self.command("receive", "--name", name), input=data, capture_output=True, check=False)
        if result.returncode != 0:
            said = _said(result.stderr)
            if "No module named" in said or "No such file" in said:
                raise LabError(f"{self.where} cannot take detached sweeps yet ({said})", hint="run `lab up` first")
            raise LabError(f"the sweep could not be handed {self.where}: {said}")

    def start(self, name: str) -> None:
        raise NotImplementedError

    def stop(self, name: str, say: Say) -> bool:
        raise NotImplementedError

    def state(self, name: str) -> dict[str, Any] | None:
        result = subprocess.run(self.command("watch", "--name", name, "--once"), capture_output=True, check=False)
        if result.returncode != 0:
            raise LabError(_said(result.stderr) or f"cannot read sweep {name!r} {self.where}")
        lines = result.stdout.decode(errors="replace").strip().splitlines()
        return json.loads(lines[-1]) if lines and lines[-1] != "null" else None

    def listing(self) -> list[dict[str, Any]]:
        result = subprocess.run(self.command("list"), capture_output=True, check=False)
        if result.returncode != 0:
            raise LabError(f"cannot list the sweeps {self.where}: {_said(result.stderr)}")
        return json.loads(result.stdout.decode() or "[]")

    def stop_all(self, say: Say) -> list[str]:
        """Stop every running sweep as Ctrl-C does (`lab down`); the sweeps stopped."""
        stopped = []
        for sweep in self.listing():
            if sweep.get("status") in ("running", "starting") and self.stop(str(sweep["name"]), say):
                stopped.append(str(sweep["name"]))
        return stopped


def holding(hosts: list[SweepHost], name: str) -> SweepHost:
    """Of the places that keep sweeps' records (`Lab.sweep_hosts`), the one whose record of sweep `name` is the
    newest: a detached sweep's on the tracker, or the one a terminal left on this machine; the first place when
    none has one (it says so)."""
    if len(hosts) == 1:
        return hosts[0]
    chosen, newest = hosts[0], -1.0
    for host in hosts:
        try:
            state = host.state(name)
        except LabError:
            continue
        updated = float((state or {}).get("updated") or 0)
        if state is not None and updated > newest:
            chosen, newest = host, updated
    return chosen


def listing(hosts: list[SweepHost], say: Say) -> dict[str, dict[str, Any]]:
    """The sweeps every place keeps (name -> its newest record); a place that cannot be asked is said and skipped."""
    found: dict[str, dict[str, Any]] = {}
    for host in hosts:
        try:
            records = host.listing()
        except LabError as exc:
            say(f"cannot tell which sweeps run {host.where}: {exc.one_line()}")
            continue
        for record in records:
            name = str(record.get("name"))
            if float(record.get("updated") or 0) >= float(found.get(name, {}).get("updated") or 0):
                found[name] = record
    return found


def _said(stderr: bytes) -> str:
    lines = [line for line in stderr.decode(errors="replace").strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("error: ") if lines else ""


@dataclass
class LocalSweeps(SweepHost):
    root: Path
    where: str = "on this machine"

    def command(self, *args: str) -> list[str]:
        return [sys.executable, *MODULE, *args, "--root", str(self.root)]

    def submit(self, name: str, data: bytes) -> None:
        service.receive(self.root, name, data)

    def start(self, name: str) -> None:
        service.start_process(self.root, name)

    def stop(self, name: str, say: Say) -> bool:
        return service.stop(self.root, name, say)

    def state(self, name: str) -> dict[str, Any] | None:
        folder = service.folder_of(self.root, name)
        if not folder.is_dir():
            raise LabError(f"no sweep named {name!r} {self.where}")
        return service.read_state(folder)

    def listing(self) -> list[dict[str, Any]]:
        return service.listing(self.root)

    def stop_all(self, say: Say) -> list[str]:
        stopped = []
        for sweep in service.listing(self.root) if self.root.is_dir() else []:
            if service.running(service.folder_of(self.root, str(sweep["name"]))) is not None:
                service.stop(self.root, str(sweep["name"]), say)
                stopped.append(str(sweep["name"]))
        return stopped


@dataclass
class TrackerSweeps(SweepHost):
    access: remote.Access
    tracker: remote.Host
    data: str  # the tracker's data folder (sweeps/ is in it)
    user: str  # the tracker's user, who runs the sweeps

    @property
    def where(self) -> str:  # type: ignore[override]
        return f"on the tracker ({self.tracker.address})"

    def command(self, *args: str) -> list[str]:
        inner = ["sudo", "-n", "-u", self.user, TRACKER_PYTHON, *MODULE, *args, "--root", self.data]
        return self.access.ssh(self.tracker, inner)

    def _systemctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        argv = self.access.ssh(self.tracker, ["sudo", "-n", "systemctl", *args])
        return subprocess.run(argv, capture_output=True, check=False, timeout=timeout)

    def start(self, name: str) -> None:
        unit = UNIT.format(name=service.check_name(name))
        result = self._systemctl("start", unit)
        if result.returncode != 0:
            said = _said(result.stderr)
            if "not found" in said or "does not exist" in said:
                raise LabError(f"the tracker cannot run detached sweeps yet ({said})", hint="run `lab up` first")
            raise LabError(f"{unit} did not start on the tracker: {said}", hint=f"`lab sweep logs {name}`")

    def stop(self, name: str, say: Say) -> bool:
        unit = UNIT.format(name=service.check_name(name))
        active = self._systemctl("is-active", "--quiet", unit).returncode == 0
        if not active:
            return False
        say(f"stopping sweep {name!r} on the tracker as Ctrl-C does ({unit})")
        result = self._systemctl("stop", unit, timeout=service.STOP_TIMEOUT_S + 30)
        if result.returncode != 0:
            raise LabError(f"{unit} did not stop: {_said(result.stderr)}", hint=f"`lab sweep logs {name}`")
        return True
