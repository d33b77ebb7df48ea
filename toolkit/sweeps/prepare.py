"""What a host needs before its first trial of a sweep: the sweep's datasets, its environment.

A step is made for a sweep from its space file, its notebook's folder and where it runs (`SweepPlace`). The
dispatcher calls every step's `check()` before any trial (a dataset that is not in the store, a requirements
file that cannot be read: the sweep fails there, naming it), then `on_host()` once per host before that host's
first trial (hosts in parallel, slots of one host waiting for one preparation). What a step returns goes into the
trials on that host: variables for their kernels, the kernel they run with, tags on their runs.

Steps live with what they prepare (`toolkit.data.sweep`, `toolkit.envs.sweep`) and are listed in STEP_FACTORIES
by name, imported only when a sweep starts (`lab --help` stays fast).
"""

from __future__ import annotations

import importlib
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from toolkit.sweeps.place import SweepPlace
    from toolkit.sweeps.space import Space

# "module:function" entries; each function(space, folder, place, notebook=...) -> Step | None (None: nothing to
# prepare); `notebook` is passed when the sweep names it.
STEP_FACTORIES: list[str] = ["toolkit.sweeps.workdir:step", "toolkit.data.sweep:step", "toolkit.envs.sweep:step"]
PREPARE_TIMEOUT_S = 3600.0  # the longest one command of a step may take on a host (a big dataset, an install)


@dataclass(frozen=True)
class Prepared:
    """What a step hands the trials on one host."""

    env: dict[str, str] = field(default_factory=dict)  # variables for the trials' kernels
    kernel: str | None = None  # the kernelspec the trials run with (None: the notebook's own)
    tags: dict[str, str] = field(default_factory=dict)  # MLflow tags on each trial's run

    def __or__(self, other: Prepared) -> Prepared:
        return Prepared(
            env={**self.env, **other.env}, kernel=other.kernel or self.kernel, tags={**self.tags, **other.tags}
        )


class HostCommands(Protocol):
    """A host the sweep's slots run on, as a step sees it."""

    name: str  # "local", or the worker's inventory name
    local: bool  # True: this machine (the local lab); False: a worker reached over SSH
    python: str  # the lab's Python on that host (its toolkit imports there)

    def run(self, argv: Sequence[str], *, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run `argv` on the host as the login user (the one trials run as); output captured as text, never
        raising for a non-zero exit (a host that cannot be reached raises toolkit.hosts.ssh.Unreachable)."""
        ...


class Step(Protocol):
    name: str  # what the sweep's view shows while it runs ("datasets", "environment")

    def check(self) -> None:
        """Before any trial, on the dispatching side: raise LabError (one line) when the sweep cannot run."""
        ...

    def on_host(self, host: HostCommands) -> Prepared:
        """Prepare one host (idempotent: a host already prepared answers fast); raise LabError to fail the
        sweep, naming what is wrong on which host."""
        ...


@dataclass(frozen=True)
class LocalHost:
    name: str = "local"
    local: bool = True
    python: str = field(default_factory=lambda: __import__("sys").executable)

    def run(self, argv: Sequence[str], *, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout or PREPARE_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )


@dataclass(frozen=True)
class SshHost:
    access: Any  # toolkit.hosts.ssh.Access
    host: Any  # toolkit.hosts.ssh.Host
    local: bool = False
    python: str = "/opt/lab/venv/bin/python"

    @property
    def name(self) -> str:
        return str(self.host.name)

    def run(self, argv: Sequence[str], *, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        from toolkit.hosts import ssh as remote

        result = remote.run(self.access, self.host, list(argv), check=False, timeout=timeout or PREPARE_TIMEOUT_S)
        return subprocess.CompletedProcess(list(result.argv), result.returncode, result.stdout, result.stderr)


def host_of(slot: Any) -> HostCommands:
    """The host a slot runs its trials on: a worker over SSH, or this machine."""
    if getattr(slot, "access", None) is not None and getattr(slot, "host", None) is not None:
        return SshHost(slot.access, slot.host)
    return LocalHost()


def steps_for(space: Space, folder: Path, place: SweepPlace, notebook: Path | None = None) -> tuple[Step, ...]:
    """The steps a sweep of `notebook` (in `folder`) needs, in STEP_FACTORIES' order."""
    steps: list[Step] = []
    named = {"notebook": notebook} if notebook is not None else {}
    for entry in STEP_FACTORIES:
        module, _, function = entry.partition(":")
        step = getattr(importlib.import_module(module), function)(space, folder, place, **named)
        if step is not None:
            steps.append(step)
    return tuple(steps)


def on_host(steps: Sequence[Step], host: HostCommands) -> Prepared:
    """Every step's preparation of one host, in order, merged."""
    prepared = Prepared()
    for step in steps:
        prepared = prepared | step.on_host(host)
    return prepared
