"""What a lab is, on any target: the interface each target implements, and what its answers look like.

A target is one class: `LocalLab` (this machine), `SshLab` (machines the user has), `GcpLab` (VMs Pulumi makes,
then an `SshLab` on them). The command line opens the stack's lab (`toolkit.labs.open_lab`), asks it, and
renders the `Report` it answers (a document for --json, lines and tables for people); it never asks which
target it has. A new target (another cloud, a Slurm login node) is one module with one such class, registered
in `toolkit.labs.TARGETS`, and its tests.
"""

from __future__ import annotations

import abc
import contextlib
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from toolkit.errors import EXIT_BACKUP_FAILED, LabError
from toolkit.sweeps.place import SweepPlace

if TYPE_CHECKING:
    from toolkit.config import schema
    from toolkit.console import Ui
    from toolkit.labs.prerequisites import Check
    from toolkit.sweeps.hosting import SweepHost

Ask = Callable[..., None]  # stack_init's question: (key, question, default=None, make=str)


@dataclass
class Table:
    """A table for people: a title, its columns, and rows of cells (rich markup allowed)."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)


@dataclass
class Report:
    """A lab's answer to one command: `document` for --json; for people, `tables` then `lines` (text); and a
    `failure` to end with once both are shown (e.g. `lab down`'s leftovers, exit 6)."""

    document: dict[str, Any]
    lines: list[str] = field(default_factory=list)
    failure: LabError | None = None
    tables: list[Table] = field(default_factory=list)


@dataclass(frozen=True)
class UpRequest:
    port: int
    jupyter_port: int
    no_jupyter: bool = False
    preview: bool = False
    fallback_on_demand: bool = False
    dashboard_port: int | None = None  # local: optuna-dashboard's; None is its default, or a free one if taken


@dataclass(frozen=True)
class DownRequest:
    force: bool = False
    destroy_data: bool = False


@dataclass(frozen=True)
class RestoreRequest:
    name: str | None = None
    from_bucket: bool = False
    stop: bool = False
    at: dt.datetime | None = None  # a point in time, from the replica (`lab restore --at`)


@dataclass(frozen=True)
class Forward:
    """One tunnel `lab tunnel` opens: what, to which host, on which local port, and what to tell the user."""

    what: str
    host: Any
    local_port: int
    address: str
    remote_port: int
    suffix: str = ""
    note: str = ""


class Lab(abc.ABC):
    """One stack's lab on one target."""

    target: ClassVar[str]
    settings: schema.Settings

    @property
    def stack(self) -> str:
        return self.settings.stack

    @classmethod
    @abc.abstractmethod
    def open(cls, stack_name: str, ui: Ui | None = None) -> Lab:
        """The stack's lab on this target (its settings must be valid for it)."""

    # -- what this machine needs, and what `lab init` asks (no stack is opened for these) ----------------------
    @classmethod
    @abc.abstractmethod
    def prerequisites(
        cls, public_key_path: str, project: str | None, settings: schema.Settings | None = None
    ) -> list[Check]:
        """Every prerequisite of this target on this machine, in the order a user would fix them (`settings`: the
        stack's, when it has valid ones for this target)."""

    @classmethod
    def ask_init(cls, ask: Ask, raw: dict[str, Any]) -> None:
        """`lab init` in a terminal: ask for this target's keys the flags did not give (none by default)."""
        return

    @classmethod
    def init_defaults(cls, raw: dict[str, Any]) -> None:
        """Keys `lab init` writes out even at their defaults for this target (none by default)."""
        return

    @classmethod
    def summary(cls, settings: schema.Settings) -> str:
        """What `lab config validate` says of a valid stack of this target."""
        return f"target {settings.target}"

    @classmethod
    def next_steps(cls, flag: str) -> str:
        return f"next: lab config validate{flag}, lab doctor{flag}, then lab up{flag}"

    # -- the lab's life --------------------------------------------------------------------------------------
    @abc.abstractmethod
    def up(self, request: UpRequest, ui: Ui) -> Report: ...

    @abc.abstractmethod
    def status(self, ui: Ui) -> Report: ...

    @abc.abstractmethod
    def backup(self, ui: Ui) -> Report: ...

    @abc.abstractmethod
    def restore(self, request: RestoreRequest, ui: Ui) -> Report: ...

    @abc.abstractmethod
    def down(self, request: DownRequest, ui: Ui) -> Report: ...

    # -- sweeps ------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def sweep_place(
        self, exits: contextlib.ExitStack, parallel: int | None, gpus: list[str] | None, ui: Ui
    ) -> SweepPlace:
        """The slots a sweep runs on and how the dispatcher reaches the tracker (tunnels live in `exits`)."""

    @abc.abstractmethod
    def study_storage(self) -> contextlib.AbstractContextManager[Any]:
        """The lab's Optuna storage, open while the block runs."""

    # -- detached sweeps (`lab dispatch --detach`, `lab sweep ...`) ----------------------------------------------
    detach_by_default: ClassVar[bool] = False  # where the laptop is not where trials run, sweeps go to the tracker

    @abc.abstractmethod
    def sweep_host(self) -> SweepHost:
        """Where this lab's detached sweeps live and run."""

    def terminal_sweeps(self) -> SweepHost:
        """Where a sweep run in a terminal keeps its record: this machine, the stack's folder
        (`toolkit.sweeps.record`), read by the `lab sweep` commands as a detached sweep's is."""
        from toolkit.config import paths
        from toolkit.sweeps.hosting import LocalSweeps

        return LocalSweeps(paths.stack_home(self.stack))

    def sweep_hosts(self) -> list[SweepHost]:
        """Every place that keeps records of this lab's sweeps: where its detached sweeps run, and this machine
        (its terminal sweeps) when that is another place; this machine alone when the other cannot be named now."""
        here = self.terminal_sweeps()
        try:
            there = self.sweep_host()
        except LabError:
            return [here]
        return [there] if there == here else [there, here]

    @abc.abstractmethod
    def detached_place(self, parallel: int | None, gpus: list[str] | None) -> dict[str, Any]:
        """Where a detached sweep's trials run, as its service reads it (`toolkit.sweeps.service.place_of`)."""

    # -- the budget (`toolkit.budget`) ---------------------------------------------------------------------------
    def budget_workers(self) -> dict[str, Any] | None:
        """What the tracker's budget guard needs to stop the workers' VMs (gcp: project, instances, zones)."""
        return None

    def hand_budget(self, document: dict[str, Any]) -> None:
        """Hand the budget guard what `lab up` set (`toolkit.budget.tracker.handed`). The local guard reads the
        stack's folder itself, so by default there is nothing to hand."""
        return

    def budget_record(self) -> dict[str, Any] | None:
        """The budget guard's record where it runs apart from this machine (ssh, gcp: the tracker's budget.json, what
        `lab up` handed it and the guard's `fired` record; {} when it has none); a LabError when it cannot be read.
        None where the guard keeps this machine's records (local)."""
        return None

    # -- reaching the hosts (remote labs) ----------------------------------------------------------------------
    uptime_note: ClassVar[str] = "the lab is not up"

    def forwards(self, mlflow_port: int, jupyter_port: int, dashboard_port: int) -> list[Forward]:
        """The tunnels `lab tunnel` opens (on these local ports)."""
        raise LabError(
            f"the {self.target} lab needs no tunnel: its services already listen on 127.0.0.1", hint="`lab status`"
        )

    def open_forward(self, forward: Forward) -> Any:
        raise LabError(f"the {self.target} lab has no tunnels")

    def login(self, host: str, command: list[str] | None) -> list[str]:
        """The ssh argv that logs in to one of the lab's hosts (and runs `command` there)."""
        raise LabError(
            f"the {self.target} lab has no hosts to log in to", hint="use --target ssh with a stack that lists hosts"
        )


def keeps_its_data(request: DownRequest) -> None:
    """The local and ssh targets never delete data: `--destroy-data` is refused there before anything stops."""
    if request.destroy_data:
        raise LabError("--destroy-data is for the gcp target", hint="the local and ssh targets never delete data")


def backup_failed(exc: LabError, request: DownRequest, ui: Ui) -> None:
    """`lab down`'s backup failed: nothing is stopped (exit 4), unless --force, which goes on and says so."""
    if not request.force:
        raise LabError(
            f"the backup failed, so nothing was stopped: {exc.one_line()}",
            hint="fix that, or pass --force to stop without a backup",
            code=EXIT_BACKUP_FAILED,
        ) from None
    ui.say(f"warning: stopping without a backup (--force): {exc.one_line()}")
