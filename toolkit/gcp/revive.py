"""Starting GCP workers again while a sweep still needs them: a spot VM GCP preempted (its instance stops:
status TERMINATED) or a worker that powered itself off is started through the Compute API.

`Reviver` is polled from the sweep's loop and never blocks it: `poll(name)` makes at most one API call, and only
once that worker is due (a VM being started is asked about every few seconds, a running one every half minute,
one that could not be started after a backoff). What it returns is one line for `lab sweep watch`:

    worker-1: running
    worker-1: stopped (preempted, or powered off when idle): starting it
    worker-1: no A100 capacity in us-central1-a, retrying in 120 s

A start that GCP refuses for capacity (ZONE_RESOURCE_POOL_EXHAUSTED and its variants, read by
toolkit.gcp.capacity from the operation's error) or for a quota, and an API that does not answer, are retried
with exponential backoff (30 s, doubling, at most 10 minutes); the other workers are not held up. A VM already
running is not an error; neither is one still stopping (GCP answers `resourceNotReady` to a start then).

The workers are zonal VMs: a worker is started where it is; moving it to another zone is `lab up`'s job.
On the tracker the calls run with the tracker's service account (metadata-server credentials), whose only
Compute grant is a custom role (get, start, stop of the lab's workers; reading zone operations) under an IAM
condition naming the worker instances (infra/identity.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from toolkit.errors import LabError
from toolkit.gcp import api, capacity

FIRST_BACKOFF_S = 30.0
MAX_BACKOFF_S = 600.0
CHECK_RUNNING_S = 30.0  # how often a running worker's status is read again
CHECK_OPERATION_S = 5.0  # how often a start in progress is asked about
CHECK_TRANSITION_S = 10.0  # how often a VM that is stopping or booting is read again

Clock = Callable[[], float]


@dataclass(frozen=True)
class Worker:
    """One worker as the sweep knows it (`name`: worker-1) and as GCP knows it (its VM and zone)."""

    name: str
    instance: str
    zone: str


@dataclass
class _State:
    worker: Worker
    due: float = 0.0
    line: str = "not checked yet"
    retry_at: float | None = None  # set while a failure waits for its backoff: the line gets "retrying in N s"
    backoff: float = 0.0
    operation: str | None = None  # the start operation being followed
    asked_at: float = 0.0
    start_next: bool = False  # the VM was seen stopped: the next due poll asks GCP to start it
    instance: api.Instance | None = field(default=None)


class Reviver:
    """Starts stopped workers again; see the module's notes. Not thread-safe: poll it from one loop."""

    def __init__(
        self,
        project: str,
        workers: Sequence[Worker],
        *,
        what: str = "GPU",
        clock: Clock = time.monotonic,
        first_backoff_s: float = FIRST_BACKOFF_S,
        max_backoff_s: float = MAX_BACKOFF_S,
    ) -> None:
        if not project:
            raise LabError("no gcp:project to start the workers in")
        self.project = project
        self.what = what  # what a stockout lacks, as the user says it: "A100", "L4", "GPU"
        self.clock = clock
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self._states = {w.name: _State(w) for w in workers}

    # -- what the sweep asks ------------------------------------------------------------------------------------

    def poll(self, name: str) -> str:
        """The worker's status line, after at most one API call if the worker is due; never raises for GCP's
        sake (an error is the line, and is retried after a backoff)."""
        state = self._state(name)
        now = self.clock()
        if now >= state.due:
            try:
                self._step(state, now)
            except LabError as exc:  # ApiError, NotAsked: GCP said no, or could not be asked
                self._failed(state, now, f"cannot ask GCP about {state.worker.instance} ({exc.one_line()})")
        return self.status(name)

    def status(self, name: str) -> str:
        """The last status line, without asking GCP."""
        state = self._state(name)
        line = f"{name}: {state.line}"
        if state.retry_at is not None:
            line += f", retrying in {max(0, math.ceil(state.retry_at - self.clock()))} s"
        return line

    def statuses(self) -> dict[str, str]:
        return {name: self.status(name) for name in self._states}

    def running(self, name: str) -> bool:
        """Whether GCP last said the VM runs (then SSH decides whether its slots rejoin)."""
        instance = self._state(name).instance
        return instance is not None and instance.status == api.RUNNING

    def instance(self, name: str) -> api.Instance | None:
        """The VM as last read (its internal address stays across a stop; its ephemeral external one does not)."""
        return self._state(name).instance

    # -- one step per due poll ----------------------------------------------------------------------------------

    def _state(self, name: str) -> _State:
        try:
            return self._states[name]
        except KeyError:
            raise LabError(
                f"no worker {name!r} to start", hint=f"the lab's workers: {', '.join(self._states)}"
            ) from None

    def _step(self, state: _State, now: float) -> None:
        if state.operation:
            self._follow(state, now)
        elif state.start_next:
            self._start(state, now)
        else:
            self._check(state, now)

    def _check(self, state: _State, now: float) -> None:
        worker = state.worker
        instance = api.get_instance(self.project, worker.zone, worker.instance)
        state.instance = instance
        state.retry_at = None
        if instance is None:
            state.line = f"no VM {worker.instance} in {worker.zone} (`lab up` creates it)"
            state.due = now + self.max_backoff_s
        elif instance.status == api.RUNNING:
            state.line = "running"
            state.backoff = 0.0
            state.due = now + CHECK_RUNNING_S
        elif instance.status == "TERMINATED":
            state.line = "stopped (preempted, or powered off when idle): starting it"
            state.start_next = True
            state.due = now
        elif instance.status in ("STOPPING", "SUSPENDING"):
            state.line = f"{instance.status.lower()}: it is started again once stopped"
            state.due = now + CHECK_TRANSITION_S
        elif instance.status in api.STARTING:
            state.line = f"booting ({instance.status})"
            state.due = now + CHECK_TRANSITION_S
        elif instance.status == "SUSPENDED":
            state.line = "suspended (not by the lab): resume it in the console, or run `lab up`"
            state.due = now + self.max_backoff_s
        else:
            state.line = f"GCP says {instance.status}"
            state.due = now + CHECK_TRANSITION_S

    def _start(self, state: _State, now: float) -> None:
        worker = state.worker
        state.start_next = False
        try:
            started = api.start_instance(self.project, worker.zone, worker.instance)
        except api.ApiError as exc:
            if "resourceNotReady" in exc.reasons:  # still stopping: not an error, read it again soon
                state.line = "still stopping: it is started again once stopped"
                state.due = now + CHECK_TRANSITION_S
                return
            raise
        state.operation = str(started.get("name") or "")
        state.asked_at = now
        state.line = "stopped (preempted, or powered off when idle): starting it"
        if started.get("status") == "DONE" or not state.operation:
            self._finished(state, now, started)
        else:
            state.due = now + CHECK_OPERATION_S

    def _follow(self, state: _State, now: float) -> None:
        worker = state.worker
        current = api.get_operation(self.project, worker.zone, str(state.operation))
        if current.get("status") != "DONE":
            state.line = f"starting (asked GCP {now - state.asked_at:.0f} s ago)"
            state.due = now + CHECK_OPERATION_S
            return
        self._finished(state, now, current)

    def _finished(self, state: _State, now: float, operation: dict) -> None:
        state.operation = None
        errors = api.operation_errors(operation)
        if not errors:
            state.line = "started: waiting for it to boot"
            state.due = now  # the next poll reads its status
            return
        text = "; ".join(f"{e.get('code', 'ERROR')}: {e.get('message', '')}".strip() for e in errors)
        found = capacity.classify(text)
        zone = state.worker.zone
        if isinstance(found, capacity.Stockout):
            self._failed(state, now, f"no {self.what} capacity in {found.zone or zone}")
        elif isinstance(found, capacity.Quota):
            where = f"in region {found.region}" if found.region else "across all regions"
            self._failed(state, now, f"GCP quota {found.name} is exhausted {where}")
        else:
            self._failed(state, now, f"GCP did not start it ({text[:200]})")

    def _failed(self, state: _State, now: float, why: str) -> None:
        state.backoff = self.first_backoff_s if state.backoff <= 0 else min(self.max_backoff_s, state.backoff * 2)
        state.line = why
        state.retry_at = now + state.backoff
        state.due = state.retry_at
        state.start_next = False
        state.operation = None
