"""A sweep: Optuna proposes parameters, slots run the notebook with papermill, MLflow records each trial.

The study lives in the tracker's `optuna.db` (so `lab backup` keeps it); the same study name resumes.
Each trial's MLflow run is made here, up front, in an experiment made here once (never by the
notebooks: concurrent `set_experiment` calls race). The notebook gets MLFLOW_TRACKING_URI and
MLFLOW_RUN_ID, so a plain `mlflow.start_run()` logs into its run; the objective is read back from the run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.errors import LabError
from toolkit.hosts import ssh as remote
from toolkit.sweeps import prepare, provenance, slots
from toolkit.sweeps.provenance import Provenance
from toolkit.sweeps.space import Space

REJOIN_WAIT_S = 3600.0  # how long a slot whose host went away waits for it to answer again, while trials are left
REJOIN_POLL_S = 10.0
MAX_RETRIES = 2  # a slot whose process dies runs the same parameters again, at most this often
ERROR_TAG_LIMIT = 5000
INTERRUPTED = "lab_interrupted"
LOCK_PREFIX = ".sweep-"  # a study's dispatcher lock, beside its storage
STOP_TIMEOUT_S = 120  # `lab down`'s wait for a dispatcher it interrupted to record its trials
RUN_ID_ATTR = "mlflow_run_id"
RESUME_ATTR = "lab_resume_run_id"  # on a queued trial: the run of the attempt it repeats
RESUME_ENV = "LAB_RESUME_RUN_ID"  # in a retry's kernel: that run, so `toolkit.checkpoints` resumes from it
LEASE_ATTR = "lab.dispatcher"  # on the study: which dispatcher sweeps it, until when (renewed while it runs)
LEASE_S = 30.0  # a dispatcher that was killed frees its study in this time
LEASE_SETTLE_S = 0.3  # a lease taken is read back after this, so two dispatchers starting at once cannot both hold it
# What every trial's kernel gets: no MLflow download progress bars in the trial's output (the variable is
# mlflow/environment_variables.py's MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR; a notebook may still set it).
QUIET_KERNEL = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
COST_METRIC = "cost_usd"  # on each trial's run, and as a user attribute of the Optuna trial
REPEAT_ATTR = "lab_repeat_of"  # a trial skipped for repeating an earlier one's parameters (`sampling`); not counted


STOPPED_BEFORE = slots.Outcome("cancelled", 0.0, "the sweep was stopped before this trial ran")


@dataclass
class TrialResult:
    number: int
    params: dict[str, Any]
    slot: str
    state: str = "RUNNING"  # RUNNING, COMPLETE, FAIL, INTERRUPTED
    value: float | None = None
    run_id: str | None = None
    error: str = ""
    attempts: int = 0
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0  # time inside the slot (papermill), all attempts
    cost_usd: float | None = None  # the slot's share of its machine's price for that time (None: not priced)
    slot_start: float = 0.0  # when papermill started and ended, on the sweep's clock (time.monotonic)
    slot_end: float = 0.0
    output: str = ""
    resume_run_id: str | None = None  # the previous attempt's run (a retry resumes from its checkpoints)
    log: str = ""  # the trial's output while it runs
    again: str = ""  # why this attempt runs the trial again (its previous attempt's end), for the sweep's log


@dataclass
class Progress:
    """What the display shows; updated by the slot threads under the sweep's lock."""

    planned: int
    already: int
    results: list[TrialResult] = field(default_factory=list)
    best: float | None = None

    def count(self, state: str) -> int:
        return sum(1 for r in self.results if r.state == state)


@dataclass(frozen=True)
class SweepSpec:
    notebook: Path
    space: Space
    study: str
    trials: int
    timeout: float | None
    output_pattern: str
    tracking_uri: str
    storage_path: Path  # the study DB (local), or beside which the study's lock lives (remote)
    max_retries: int = MAX_RETRIES
    grpc_port: int | None = None  # a remote tracker's Optuna storage proxy, through a tunnel on this port
    logs: Path | None = None  # a folder for each trial's output while it runs (detached sweeps keep them)
    steps: tuple[prepare.Step, ...] = ()  # what each host needs before its first trial (datasets, environment)
    provenance: Provenance | None = None  # a detached sweep's, read where it was dispatched (None: read it here)


def output_path(pattern: str, *, study: str, trial: int, run_id: str, notebook: Path) -> Path:
    try:
        return Path(pattern.format(study=study, trial=trial, run_id=run_id, notebook=notebook.stem))
    except (KeyError, IndexError, ValueError) as exc:
        raise LabError(
            f"--output {pattern!r} has an unknown placeholder {exc}",
            hint="use {study}, {trial}, {run_id} and {notebook}",
        ) from None


@contextlib.contextmanager
def pid_lock(lock_path: Path, what: str, refusal: LabError) -> Iterator[None]:
    """Held (flock) while the block runs, holding this process's pid and `what` it runs; `refusal` when another
    process holds it. `held` reads it, `interrupt` stops its holder as Ctrl-C does."""
    with lock_path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise refusal from None
        handle.truncate(0)
        handle.write(json.dumps({"pid": os.getpid(), "study": what}) + "\n")
        handle.flush()
        yield


@contextlib.contextmanager
def study_lock(storage_path: Path, study: str) -> Iterator[None]:
    """One dispatcher per study at a time on this machine: a second one is refused rather than racing the first;
    `lab down` stops the holder as Ctrl-C does (`interrupt_running`)."""
    lock_path = storage_path.parent / f"{LOCK_PREFIX}{hashlib.sha256(study.encode()).hexdigest()[:16]}.lock"
    refusal = LabError(
        f"study {study!r} is already being swept by another `lab dispatch`", hint="wait for it, or use another --study"
    )
    with pid_lock(lock_path, study, refusal):
        yield


def held(lock_path: Path) -> dict[str, Any] | None:
    """The process holding a `pid_lock` ({pid, study}), None when none does."""
    try:
        with lock_path.open("r") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = handle.read()
            else:
                return None  # nobody holds it
    except OSError:
        return None
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return {"pid": -1}  # held, by a process that has not written itself down yet
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else {"pid": -1}


def interrupt(lock_path: Path, what: str, timeout_s: float, hint: str) -> None:
    """Stop the holder of a `pid_lock` as Ctrl-C does (SIGINT) and wait until it has let go (its bookkeeping done)."""
    pid = signal_holder(lock_path)
    if pid is not None:
        wait_for(lock_path, pid, what, timeout_s, hint)


def signal_holder(lock_path: Path) -> int | None:
    """Send the holder of a `pid_lock` SIGINT (a sweep hands out no trial after it); its pid, None when none held it."""
    holder = held(lock_path)
    if holder is None:
        return None
    pid = int(holder["pid"])
    if pid > 0:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
    return pid


def wait_for(lock_path: Path, pid: int, what: str, timeout_s: float, hint: str) -> None:
    """Wait until the holder of a `pid_lock` has let go of it."""
    deadline = time.monotonic() + timeout_s
    while held(lock_path) is not None:
        if time.monotonic() > deadline:
            raise LabError(f"{what} (pid {pid}) did not stop within {timeout_s:.0f} s", hint=hint.format(pid=pid))
        time.sleep(0.2)


def interrupt_running(folder: Path, say: Callable[[str], None], timeout_s: float = STOP_TIMEOUT_S) -> list[str]:
    """Stop every `lab dispatch` sweeping into the study storage in `folder`, as Ctrl-C does (SIGINT: its
    running trials are stopped, marked interrupted and their parameters queued to run again), and wait for
    each to finish that bookkeeping; the studies stopped. Only dispatchers on this machine can be reached."""
    signalled: list[tuple[Path, int, str]] = []
    for lock_path in sorted(folder.glob(f"{LOCK_PREFIX}*.lock")):  # every sweep first: none hands out a trial after
        holder = held(lock_path)
        if holder is None:
            continue
        study = str(holder.get("study", "?"))
        say(f"stopping the sweep of study {study!r} (`lab dispatch`, pid {holder['pid']}) as Ctrl-C does")
        pid = signal_holder(lock_path)
        if pid is not None:
            signalled.append((lock_path, pid, study))
    hint = "stop it (kill -INT {pid}), then run `lab down` again"
    for lock_path, pid, study in signalled:  # ... then each one's bookkeeping
        wait_for(lock_path, pid, f"the sweep of study {study!r}", timeout_s, hint)
    return [study for _, _, study in signalled]


class Sweep:
    """One `lab dispatch`: ask, run on free slots, tell; interruptible; resumable by study name."""

    def __init__(self, spec: SweepSpec, slot_list: list[slots.Slot]) -> None:
        self.spec = spec
        self.slots = slot_list
        self.lock = threading.Lock()
        self.cancel = threading.Event()
        self.notebook_sha = hashlib.sha256(spec.notebook.read_bytes()).hexdigest()
        self.provenance = spec.provenance or provenance.of(spec.notebook)  # the runs' tags: commit, path, dirty
        self.progress: Progress | None = None
        self.study: Any = None
        self.client: Any = None
        self.experiment_id = ""
        self.errors: list[BaseException] = []
        self.active = 0
        self.all_done = threading.Event()
        self.finisher = ThreadPoolExecutor(max_workers=2, thread_name_prefix="finish")
        self.finishing: list[Future] = []
        # trials whose slot's host went away, waiting for another slot (trial, result, parameters)
        self.requeued: list[tuple[Any, TrialResult]] = []
        self.lost_slots: list[str] = []
        self.notes: dict[str, str] = {}  # slot -> what it waits for (shown by `lab sweep watch`)
        self.reviver: Any = None  # gcp: starts stopped workers again (toolkit.gcp.revive.Reviver)
        self.keeper: Any = None  # tends the workers while the sweep runs (toolkit.sweeps.keeper)
        self.rejoin_wait_s = REJOIN_WAIT_S
        self.started = time.monotonic()  # when the sweep began running (the summary's clock starts here)
        self.closed = threading.Event()
        self.lease: dict[str, Any] | None = None
        self.prepared: dict[str, prepare.Prepared] = {}  # host -> what its preparation hands its trials
        self.host_locks: dict[str, threading.Lock] = {}  # one preparation per host at a time
        self.exhausted = ""  # why no more trials are asked: a finite space the study has tried all of

    # -- setup ---------------------------------------------------------------------------------
    def open(self) -> Progress:
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # stdout is for results
        import optuna
        from mlflow.tracking import MlflowClient

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if self.spec.grpc_port:
            storage: Any = optuna.storages.GrpcStorageProxy(host="127.0.0.1", port=self.spec.grpc_port)
        else:
            storage = optuna.storages.RDBStorage(
                f"sqlite:///{self.spec.storage_path}", engine_kwargs={"connect_args": {"timeout": 60}}
            )
        space = self.spec.space
        self.study = optuna.create_study(
            study_name=self.spec.study,
            storage=storage,
            direction=space.direction,
            sampler=space.make_sampler(),
            load_if_exists=True,
        )
        if self.study.direction.name.lower() != space.direction:
            raise LabError(
                f"study {self.spec.study!r} was made to {self.study.direction.name.lower()} and the "
                f"space file says {space.direction}",
                hint="use another --study",
            )
        self._take_lease()
        self._requeue_stale()
        done = [
            t
            for t in self.study.get_trials(deepcopy=False)
            if t.state.is_finished() and not t.user_attrs.get(INTERRUPTED) and REPEAT_ATTR not in t.user_attrs
        ]
        self.client = MlflowClient(self.spec.tracking_uri)
        try:
            found = self.client.get_experiment_by_name(self.spec.study)
            self.experiment_id = found.experiment_id if found else self.client.create_experiment(self.spec.study)
        except Exception as exc:
            raise LabError(
                f"cannot reach the tracker at {self.spec.tracking_uri}: {type(exc).__name__}",
                hint="is the lab up? `lab status --local`",
            ) from None
        for step in self.spec.steps:
            step.check()  # before any trial: a missing dataset, a bad requirements file
        self.progress = Progress(planned=max(self.spec.trials - len(done), 0), already=len(done))
        with contextlib.suppress(ValueError):
            self.progress.best = self.study.best_value
        return self.progress

    def _take_lease(self) -> None:
        """One dispatcher per study, on any machine: the study records who sweeps it until when (a lease renewed
        while the sweep runs); a live lease of another dispatcher is a refusal, an expired one is taken over."""
        me = {"host": socket.gethostname(), "pid": os.getpid(), "token": secrets.token_hex(8)}
        storage, study_id = self.study._storage, self.study._study_id

        def holder() -> dict[str, Any]:
            held = storage.get_study_user_attrs(study_id).get(LEASE_ATTR)
            return held if isinstance(held, dict) else {}

        def refuse(held: dict[str, Any]) -> LabError:
            return LabError(
                f"study {self.spec.study!r} is being swept by another `lab dispatch` (on {held.get('host', '?')}, "
                f"pid {held.get('pid', '?')})",
                hint=f"wait for it, stop it (`lab sweep stop {self.spec.study}`), or use another --study; a "
                f"dispatcher that was killed frees it within {LEASE_S:.0f} s",
            )

        held = holder()
        if held.get("token") and held.get("token") != me["token"] and float(held.get("until", 0)) > time.time():
            raise refuse(held)
        storage.set_study_user_attr(study_id, LEASE_ATTR, {**me, "until": time.time() + LEASE_S})
        time.sleep(LEASE_SETTLE_S)
        if (held := holder()).get("token") != me["token"]:
            raise refuse(held)
        self.lease = me

        def renew() -> None:
            while not self.closed.wait(LEASE_S / 3):
                with contextlib.suppress(Exception):
                    storage.set_study_user_attr(study_id, LEASE_ATTR, {**me, "until": time.time() + LEASE_S})

        threading.Thread(target=renew, name="lease", daemon=True).start()

    def close(self) -> None:
        """Give the study's lease back (another dispatcher may sweep it at once)."""
        self.closed.set()
        if self.lease and self.study is not None:
            with contextlib.suppress(Exception):
                self.study._storage.set_study_user_attr(self.study._study_id, LEASE_ATTR, {**self.lease, "until": 0})
            self.lease = None

    def _requeue_stale(self) -> None:
        """Trials left RUNNING by a dispatcher that was killed: failed as interrupted, their
        parameters queued to run again first."""
        import optuna

        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            self._requeue(trial.params, trial.user_attrs.get(RUN_ID_ATTR))
            storage = self.study._storage
            storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
            storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)

    def _requeue(self, params: dict[str, Any], run_id: str | None) -> None:
        """Queue a trial's parameters to run first, with the run its retry resumes from."""
        self.study.enqueue_trial(params, user_attrs={RESUME_ATTR: run_id} if run_id else None, skip_if_exists=False)

    # -- running -------------------------------------------------------------------------------
    def run(self, on_change: Callable[[], None] = lambda: None, poll: float = 0.2) -> Progress:
        """Run the sweep to the end; Ctrl-C stops the running trials, records them, and re-raises."""
        progress = self.progress or self.open()
        self.started = time.monotonic()
        from toolkit.sweeps.keeper import Keeper

        self.keeper = Keeper(self.spec.study, self.slots, self._work_left, self._lost_hosts, self.reviver).start()
        try:
            return self._run(progress, on_change, poll)
        finally:
            self.keeper.stop()

    def _lost_hosts(self) -> set[str]:
        with self.lock:
            lost = set(self.lost_slots)
        return {slot.host.name for slot in self.slots if slot.name in lost and hasattr(slot, "host")}

    def _run(self, progress: Progress, on_change: Callable[[], None], poll: float) -> Progress:
        # Slots report their end through a counter and an event, not Thread.join: on Python 3.11 a
        # join interrupted by Ctrl-C can mark a thread that still runs as finished.
        self.active = len(self.slots)
        for slot in self.slots:
            threading.Thread(target=self._slot_loop, args=(slot,), name=slot.name, daemon=True).start()
        try:
            while not self.all_done.wait(timeout=poll):
                on_change()
        except KeyboardInterrupt:
            self.cancel.set()
            self.all_done.wait()
            self._drain()
            on_change()
            if self.errors:
                raise self.errors[0] from None
            raise
        self._drain()
        on_change()
        if self.errors:
            raise self.errors[0]
        return progress

    def _drain(self) -> None:
        """Wait for every trial's bookkeeping; a failure in it is an error of the sweep."""
        self.finisher.shutdown(wait=True)
        self.errors.extend(f.exception() for f in self.finishing if f.exception() is not None)

    def _next(self, slot: slots.Slot) -> tuple[Any, TrialResult] | None:
        with self.lock:
            progress = self.progress
            if self.cancel.is_set() or progress is None:
                return None
            if self.requeued:
                trial, result = self.requeued.pop(0)
                result.slot = slot.name
                return trial, result
            if len(progress.results) >= progress.planned or self.exhausted:
                return None
            from toolkit.sweeps import sampling

            try:
                trial = sampling.ask(self.study, self.spec.space)  # never a parameter set the study already has
            except sampling.Exhausted as exc:
                self.exhausted = (
                    f"the search space ({self.spec.space.path.name}) holds {exc.count} parameter sets and study "
                    f"{self.spec.study!r} has tried them all: no more trials to run"
                )
                return None
            result = TrialResult(
                number=trial.number,
                params=dict(trial.params),
                slot=slot.name,
                resume_run_id=trial.user_attrs.get(RESUME_ATTR),
            )
            progress.results.append(result)
            return trial, result

    def _slot_loop(self, slot: slots.Slot) -> None:
        try:
            while True:
                prepared = self._prepared(slot)
                usable = prepared is not None  # None: the host did not answer while being prepared
                while usable and prepared and (picked := self._next(slot)) is not None:
                    usable = self._run_trial(slot, *picked, prepared)  # False: the host is gone, its trial requeued
                while usable and prepared and self._waiting_for_others():
                    time.sleep(0.2)  # another slot may still hand back a trial for this one to run
                    if (picked := self._next(slot)) is not None:
                        usable = self._run_trial(slot, *picked, prepared)
                if usable or not self._rejoin(slot):
                    break
                self.prepared.pop(prepare.host_of(slot).name, None)  # a host back from the dead is checked again
        except BaseException as exc:  # a bug here must not vanish with the thread
            self.errors.append(exc)
            self.cancel.set()
        finally:
            with contextlib.suppress(Exception):
                getattr(slot, "close", lambda: None)()  # what the slot keeps between trials (a warm kernel)
            with self.lock:
                self.active -= 1
                if self.active == 0:
                    self._abandon_requeued()
                    self.all_done.set()

    def _prepared(self, slot: slots.Slot) -> prepare.Prepared | None:
        """What the slot's host hands its trials, prepared once per host (the host's other slots wait for it);
        None when the host stopped answering. A step's LabError ends the sweep, naming what is wrong."""
        if not self.spec.steps or self.cancel.is_set():
            return prepare.Prepared()
        host = prepare.host_of(slot)
        with self.lock:
            host_lock = self.host_locks.setdefault(host.name, threading.Lock())
        self.notes[slot.name] = "preparing its host: " + ", ".join(step.name for step in self.spec.steps)
        try:
            with host_lock:
                if host.name not in self.prepared:
                    self.prepared[host.name] = prepare.on_host(self.spec.steps, host)
                return self.prepared[host.name]
        except remote.Unreachable:
            return None
        finally:
            self.notes.pop(slot.name, None)

    def _rejoin(self, slot: slots.Slot) -> bool:
        """A slot whose host went away (powered off, preempted) waits for it to answer again while the sweep has
        trials left, asking `revive` (gcp: start the stopped VM) as it waits; True once the host is back."""
        answers = getattr(slot, "answers", None)
        if answers is None:
            return False
        deadline = time.monotonic() + self.rejoin_wait_s
        while not self.cancel.is_set() and self._work_left() and time.monotonic() < deadline:
            host = getattr(getattr(slot, "host", None), "name", "")
            note = self.keeper.note(host) if self.keeper is not None and host else ""
            self.notes[slot.name] = note or "its host does not answer: waiting for it to come back"
            if answers():
                with self.lock:
                    self.lost_slots = [name for name in self.lost_slots if name != slot.name]
                self.notes.pop(slot.name, None)
                return True
            self.cancel.wait(REJOIN_POLL_S)
        self.notes[slot.name] = "gone"
        return False

    def _work_left(self) -> bool:
        with self.lock:
            progress = self.progress
            if progress is None:
                return False
            more = len(progress.results) < progress.planned and not self.exhausted
            return bool(self.requeued) or more or self._busy_elsewhere()

    def _waiting_for_others(self) -> bool:
        """Whether a healthy slot should stay around: another slot may still hand back a trial."""
        with self.lock:
            return not self.cancel.is_set() and (bool(self.requeued) or self._busy_elsewhere())

    def _busy_elsewhere(self) -> bool:
        progress = self.progress
        return progress is not None and any(r.state == "RUNNING" and r.slot_end == 0.0 for r in progress.results)

    def _abandon_requeued(self) -> None:
        """No slot is left for trials whose host went away: they fail, saying so; when the sweep was stopped (Ctrl-C,
        the budget guard) they are interrupted, their parameters queued (called under the lock)."""
        for trial, result in self.requeued:
            outcome = slots.Outcome("lost", 0.0, "no slot was left to run it on (every worker went away)")
            if self.cancel.is_set():
                outcome = slots.Outcome("cancelled", 0.0, "the sweep stopped while it waited for a slot")
            self.finishing.append(self.finisher.submit(self._finish, trial, result, outcome, Path(result.output)))
        self.requeued.clear()

    def _run_trial(
        self, slot: slots.Slot, trial: Any, result: TrialResult, prepared: prepare.Prepared | None = None
    ) -> bool:
        """Run one trial on a slot (retrying a dead process there); False when the slot's host is gone."""
        spec, space = self.spec, self.spec.space
        parameters = {
            **space.fixed,
            **result.params,
            "trial_number": trial.number,
            "seed": space.trial_seed(trial.number),
        }
        outcome = slots.Outcome("died", 0.0)
        while result.attempts <= spec.max_retries:
            if self.cancel.is_set():  # stopped after it was asked for: the stop is a barrier, it does not start
                outcome, output = STOPPED_BEFORE, Path(result.output)
                break
            result.attempts += 1
            if result.run_id:
                result.resume_run_id = result.run_id  # this attempt repeats that one: it resumes from its checkpoints
            prepared = prepared or prepare.Prepared()
            run_id = self._start_run(trial.number, result, parameters, prepared.tags)
            result.run_id = run_id
            with self.lock, contextlib.suppress(Exception):
                trial.set_user_attr(RUN_ID_ATTR, run_id)  # a dispatcher killed now leaves its retry this run
            output = output_path(
                spec.output_pattern, study=spec.study, trial=trial.number, run_id=run_id, notebook=spec.notebook
            ).resolve()
            result.output = str(output)
            job = slots.Job(
                notebook=spec.notebook,
                output=output,
                parameters=parameters,
                timeout=spec.timeout,
                env={
                    **QUIET_KERNEL,
                    **prepared.env,
                    "MLFLOW_TRACKING_URI": spec.tracking_uri,
                    "MLFLOW_RUN_ID": run_id,
                    "MLFLOW_EXPERIMENT_ID": self.experiment_id,
                    **({RESUME_ENV: result.resume_run_id} if result.resume_run_id else {}),
                },
                log=self._trial_log(trial.number),
                kernel=prepared.kernel,
            )
            result.log = str(job.log or "")
            result.slot_start = result.slot_start or time.monotonic()
            result.slot_end = 0.0
            outcome = STOPPED_BEFORE if self.cancel.is_set() else slot.run(job, self.cancel)
            ended = time.monotonic()
            result.seconds += outcome.seconds
            self._log_cost(slot, run_id, outcome, result)
            if outcome.kind == "lost" and not self.cancel.is_set():
                self._fail_run(
                    run_id,
                    f"slot {slot.name} went away ({outcome.error}); the trial runs again on another slot",
                    status="FAILED",
                )
                # The trial counts as running until it is handed back, in one step: a slot waiting for others
                # (`_waiting_for_others`) that saw it neither running nor queued would leave the sweep without it.
                with self.lock:
                    result.slot_end = ended
                    result.again = f"slot {slot.name} went away ({outcome.error})"
                    self.lost_slots.append(slot.name)
                    if result.attempts <= spec.max_retries:
                        self.requeued.append((trial, result))
                        return False
                break
            if outcome.kind == "died" and result.attempts <= spec.max_retries and not self.cancel.is_set():
                self._store_notebook(run_id, output)
                self._fail_run(
                    run_id,
                    f"the slot's process died ({outcome.error}); retrying with the same parameters",
                    status="FAILED",
                )
                result.again = f"the slot's process died ({outcome.error})"
                continue  # still this slot's: its retry may yet find the host gone and hand the trial back
            result.slot_end = ended
            break
        # The bookkeeping after a trial (its notebook, its objective, telling Optuna) runs beside the
        # slot, which goes straight on to its next trial.
        self.finishing.append(self.finisher.submit(self._finish, trial, result, outcome, output))
        return outcome.kind != "lost"

    def _trial_log(self, number: int) -> Path | None:
        """Where a trial's output goes while it runs (`lab sweep logs --trial N`), when the sweep keeps logs."""
        return self.spec.logs / f"trial-{number}.log" if self.spec.logs else None

    def _log_cost(self, slot: slots.Slot, run_id: str, outcome: slots.Outcome, result: TrialResult) -> None:
        """The attempt's cost on its run: the slot's share of its machine's hourly price for its duration."""
        price = getattr(slot, "usd_per_hour", None)
        if price is None:
            return
        cost = price * outcome.seconds / 3600
        result.cost_usd = (result.cost_usd or 0.0) + cost
        with contextlib.suppress(Exception):
            self.client.log_metric(run_id, COST_METRIC, cost)
            self.client.set_tag(run_id, "lab.usd_per_hour", f"{price:.6f}")

    def _store_notebook(self, run_id: str, output: Path) -> None:
        if run_id and output.is_file():
            with contextlib.suppress(Exception):
                self.client.log_artifact(run_id, str(output))

    def _start_run(
        self, number: int, result: TrialResult, parameters: dict[str, Any], extra_tags: dict[str, str] | None = None
    ) -> str:
        from mlflow.entities import Param

        tags = {
            **(extra_tags or {}),
            "lab.study": self.spec.study,
            "lab.trial": str(number),
            "lab.slot": result.slot,
            "lab.attempt": str(result.attempts),
            **self.provenance.tags(),  # lab.notebook and its git facts, the same for detached and terminal sweeps
            "lab.notebook_sha256": self.notebook_sha,
            "mlflow.runName": f"{self.spec.study}-{number}",
        }
        if result.resume_run_id:
            tags["lab.resumes"] = result.resume_run_id  # the run this attempt repeats (and resumes from)
        run = self.client.create_run(self.experiment_id, tags=tags)
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in parameters.items()])
        return run.info.run_id

    def _fail_run(self, run_id: str, error: str, status: str) -> None:
        text = error[-ERROR_TAG_LIMIT:]
        with contextlib.suppress(Exception):
            self.client.set_tag(run_id, "lab.error", text)
            self.client.log_text(run_id, error, "error.txt")
        with contextlib.suppress(Exception):
            self.client.set_terminated(run_id, status)

    def _objective(self, run_id: str) -> tuple[float | None, str]:
        metric = self.spec.space.metric
        metrics = self.client.get_run(run_id).data.metrics
        if metric not in metrics:
            logged = ", ".join(sorted(metrics)) or "none"
            return None, f"the notebook did not log the objective metric {metric!r} (it logged: {logged})"
        value = metrics[metric]
        if math.isnan(value) or math.isinf(value):
            return None, f"the objective metric {metric!r} is {value}"
        return value, ""

    def _finish(self, trial: Any, result: TrialResult, outcome: slots.Outcome, output: Path) -> None:
        import optuna

        run_id = result.run_id or ""
        self._store_notebook(run_id, output)
        state, value, error = "FAIL", None, outcome.error
        if outcome.kind == "ok":
            value, error = self._objective(run_id)
            state = "COMPLETE" if value is not None else "FAIL"
        if outcome.kind == "cancelled":
            state, error = "INTERRUPTED", "interrupted (Ctrl-C)"
        if state == "COMPLETE":
            with contextlib.suppress(Exception):
                self.client.set_terminated(run_id, "FINISHED")
        else:
            self._fail_run(run_id, error, status="KILLED" if state == "INTERRUPTED" else "FAILED")
        with self.lock:
            trial.set_user_attr(RUN_ID_ATTR, run_id)
            if result.cost_usd is not None:
                trial.set_user_attr(COST_METRIC, result.cost_usd)
            if state == "COMPLETE":
                self.study.tell(trial, value)
            else:
                if state == "INTERRUPTED":
                    trial.set_user_attr(INTERRUPTED, True)
                    self._requeue(result.params, run_id)
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            result.state, result.value, result.error = state, value, error
            if state == "COMPLETE" and self.progress is not None:
                with contextlib.suppress(ValueError):
                    self.progress.best = self.study.best_value

    # -- reporting -----------------------------------------------------------------------------
    def best(self) -> dict[str, Any] | None:
        try:
            trial = self.study.best_trial
        except ValueError:
            return None
        run_id = trial.user_attrs.get(RUN_ID_ATTR, "")
        return {
            "trial": trial.number,
            "value": trial.value,
            "params": trial.params,
            "run_id": run_id,
            "url": f"{self.spec.tracking_uri}/#/experiments/{self.experiment_id}/runs/{run_id}",
        }


def total_cost(results: list[TrialResult]) -> float | None:
    costs = [r.cost_usd for r in results if r.cost_usd is not None]
    return round(sum(costs), 6) if costs else None


def summary(sweep: Sweep, wall: float) -> dict[str, Any]:
    """What a sweep did this run: each trial, the counts, the best trial, the cost (`lab dispatch --json`)."""
    progress = sweep.progress
    results = progress.results if progress else []
    origin = sweep.started
    return {
        "study": sweep.spec.study,
        "tracking_uri": sweep.spec.tracking_uri,
        "experiment_id": sweep.experiment_id,
        "trials": [
            {
                "number": r.number,
                "state": r.state,
                "value": r.value,
                "params": r.params,
                "run_id": r.run_id,
                "resumed_from": r.resume_run_id,
                "slot": r.slot,
                "attempts": r.attempts,
                "seconds": round(r.seconds, 3),
                "cost_usd": None if r.cost_usd is None else round(r.cost_usd, 6),
                "slot_start": round(r.slot_start - origin, 3),
                "slot_end": round(r.slot_end - origin, 3),
                "output": r.output,
                "error": r.error,
            }
            for r in results
        ],
        "slots": len(sweep.slots),
        "wall_s": round(wall, 3),
        "completed": progress.count("COMPLETE") if progress else 0,
        "failed": progress.count("FAIL") if progress else 0,
        "interrupted": progress.count("INTERRUPTED") if progress else 0,
        "best": sweep.best() if sweep.study is not None else None,
        "cost_usd": total_cost(results),
        "exhausted": sweep.exhausted or None,
    }
