"""A sweep run in a terminal (`lab dispatch` in the foreground) keeps the record a detached sweep keeps, on this
machine, in the stack's folder: `sweeps/<name>/` with state.json, dispatch.log, trials/trial-N.log and result.json
(`toolkit.sweeps.service` describes them). So `lab sweep logs NAME [--trial N]`, `lab sweep watch`, `lab sweep stop`
and `lab sweeps` read it as they read a detached one's, while it runs and after it ended.

Its run.lock is held by the `lab dispatch` that runs it, so a sweep killed outright reads as failed "without a
word", and `lab sweep stop` stops it as Ctrl-C does.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from toolkit.errors import LabError
from toolkit.sweeps import service


def folder_for(root: Path, name: str) -> Path | None:
    """The record's folder of sweep `name`, None when the name cannot name a sweep's folder (said by the caller)."""
    try:
        return service.folder_of(root, name)
    except LabError:
        return None


class Kept:
    """The record of one terminal sweep while it runs: `follow` the sweep once it is open, call it on every
    change; the block's end writes how it ended (finished, stopped on Ctrl-C or `status`, failed with its error)."""

    def __init__(self, folder: Path, name: str, where: str = "in a terminal") -> None:
        self.folder, self.name, self.where = folder, name, where
        self.sweep: Any = None
        self.started = time.monotonic()
        self.status = "finished"  # unless told otherwise, or the block ends in Ctrl-C or an error
        self.error = ""  # why it failed
        self.why = ""  # why it stopped, when not Ctrl-C
        self.events = service.Events(folder)
        self.last = 0.0
        self.lock: Any = None

    def __enter__(self) -> Kept:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o750)
        self.lock = service.run_lock(self.folder)  # refused while a detached sweep of that name runs
        self.lock.__enter__()
        (self.folder / "result.json").unlink(missing_ok=True)
        here = f"pid {os.getpid()} on {socket.gethostname()}"
        service.log_line(self.folder, f"sweep {self.name} starting {self.where} ({here})")
        service.write_state(self.folder, self._bare("starting"))
        return self

    def _bare(self, status: str) -> dict[str, Any]:
        return {
            "name": self.name,
            "study": self.name,
            "status": status,
            "pid": os.getpid(),
            "where": self.where,
            "updated": time.time(),
        }

    def follow(self, sweep: Any) -> None:
        self.sweep, self.started = sweep, time.monotonic()
        progress = sweep.progress
        service.log_line(
            self.folder,
            f"{progress.planned} trials to run on {len(sweep.slots)} slots, {progress.already} earlier",
        )
        self()

    def stopped(self, why: str) -> None:
        """The sweep was stopped (the budget guard), though it ended on its own: said in its log and state."""
        self.status, self.why = "stopped", why

    def __call__(self) -> None:
        """The sweep changed: its trials' starts and ends to the log, its state (at most once a second)."""
        if self.sweep is None or self.sweep.progress is None:
            return
        self.events(self.sweep)
        if time.monotonic() - self.last >= service.STATE_EVERY_S:
            self.last = time.monotonic()
            state = service.snapshot(self.sweep, self.started, name=self.name, status="running")
            service.write_state(self.folder, {**state, "where": self.where})

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, trace: TracebackType | None
    ) -> None:
        try:
            if kind is not None and issubclass(kind, KeyboardInterrupt):
                self.status = "stopped"
            elif isinstance(exc, LabError):
                self.status, self.error = "failed", exc.one_line()
            elif exc is not None:
                self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"
            self._end()
        finally:
            self.lock.__exit__(kind, exc, trace)

    def _end(self) -> None:
        from toolkit.sweeps import dispatch as engine

        sweep = self.sweep
        final = self._bare(self.status)
        if sweep is not None and sweep.progress is not None:
            self.events(sweep)
            final = {**service.snapshot(sweep, self.started, name=self.name, status=self.status), **final}
            summary = engine.summary(sweep, time.monotonic() - self.started)
            (self.folder / "result.json").write_text(json.dumps(summary, default=str, indent=1))
        if self.error:
            final["error"] = self.error
        if self.why:
            final["note"] = self.why
        service.write_state(self.folder, final)
        said = self.error or self.why
        service.log_line(self.folder, f"sweep {self.name} {self.status}" + (f": {said}" if said else ""))
