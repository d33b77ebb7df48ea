"""Slots: where one trial's notebook runs. A slot takes a job and returns how it ended.

The local slot keeps a runner process (`toolkit.sweeps.runner`) that starts the slot's next kernel while
the current trial runs, so a free slot starts its next trial at once; every trial still gets a fresh
kernel. The kernel sees the caller's allow-listed variables (`toolkit.environment`: never the caller's
secrets) and the slot's (for example CUDA_VISIBLE_DEVICES); the trial's (MLFLOW_TRACKING_URI,
MLFLOW_RUN_ID, ...) are put in its environment before the notebook's first cell. Remote slots (SSH to a
worker) implement the same `run`. A slot's `close()` stops what it keeps running between trials.

What a runner answers is not trusted (on a worker, anything running as the login user, notebook code included,
can write it): an answer is a JSON object of at most ANSWER_LIMIT_BYTES, a trial's log keeps its first
LOG_LIMIT_BYTES (then one line saying the rest was left out), an outcome is one a runner may give (`RUNNER_OUTCOMES`;
"lost" is the dispatcher's alone), and text is stripped of terminal control sequences (`printable`) before it is
kept or printed.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from toolkit import environment
from toolkit.sweeps import workdir

ERROR_LINES = 12
ERROR_LIMIT_CHARS = 8000  # of a trial's error, as a runner tells it
ANSWER_LIMIT_BYTES = 1024 * 1024  # one answer of a runner (a line of JSON): a longer one is left out
LOG_LIMIT_BYTES = 16 * 1024 * 1024  # of a trial's log (`lab sweep logs`): the rest is left out, and said so
RUNNER_OUTCOMES = ("ok", "failed", "died")  # what a runner may answer; anything else is "died"
# Terminal control sequences (CSI, OSC, other escapes, also as C1 characters) and control characters but tab and
# newline.
CONTROL = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?|\x1b[@-_]?"
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
)
POLL_S = 0.05
# A runner whose process ended is gone once no answer came for this long, even if its output has not ended: a
# process it left behind (or an SSH connection master) may hold the pipe open for ever.
GONE_AFTER_EXIT_S = 2.0
# papermill's exit status when nbclient raised DeadKernelError (the kernel was killed, ran out of memory).
PAPERMILL_DEAD_KERNEL = 138
# What papermill prints when the kernel went away, or never came up (a start that timed out on a busy
# host): the slot died, not the notebook, so the trial is run again.
DEAD_KERNEL_SIGNS = (
    "DeadKernelError",
    "Kernel died",
    "kernel died",
    "Kernel didn't respond",
)


def kernel_died(code: int, log: str) -> bool:
    """Whether papermill's exit `code` and stderr `log` say the kernel died (rather than the notebook failing)."""
    return code == PAPERMILL_DEAD_KERNEL or any(sign in log for sign in DEAD_KERNEL_SIGNS)


@dataclass(frozen=True)
class Job:
    notebook: Path
    output: Path
    parameters: dict[str, Any]
    env: dict[str, str]
    timeout: float | None = None
    log: Path | None = None  # where the trial's output goes while it runs (`lab sweep logs`); appended to
    kernel: str | None = None  # the kernelspec to run it with (an experiment's environment); None: the notebook's
    cwd: Path | None = None  # the trial's working folder (`toolkit.sweeps.workdir`); None: the notebook's folder


@dataclass(frozen=True)
class Outcome:
    """ok, failed (the notebook raised), timeout, died (the process or kernel went away), lost (the slot's
    host went away: the trial goes to another slot and this slot takes no more), cancelled."""

    kind: str
    seconds: float
    error: str = ""


class Slot(Protocol):
    name: str
    usd_per_hour: float | None

    def run(self, job: Job, cancel: threading.Event) -> Outcome: ...

    def close(self) -> None: ...


def kill_tree(pid: int) -> None:
    """Kill a process and everything it started (papermill starts its kernel in a session of its own)."""
    import psutil

    try:
        root = psutil.Process(pid)
        family = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for process in family:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(family, timeout=5)


def printable(text: str) -> str:
    """`text` without terminal control sequences: what a trial says cannot move the cursor or retitle a terminal."""
    return CONTROL.sub("", text)


class CappedLog:
    """A trial's log file, appended to up to `limit` bytes; past it, one line says the rest was left out."""

    def __init__(self, path: Path, limit: int | None = None) -> None:
        limit = LOG_LIMIT_BYTES if limit is None else limit
        self.path, self.limit, self.left = path, limit, limit
        self.full = False

    def write(self, text: str) -> None:
        if self.full or not text:
            return
        data = printable(text).encode("utf-8", errors="replace")
        kept = data[: max(self.left, 0)]
        with self.path.open("ab") as log:
            log.write(kept)
            self.left -= len(kept)
            if len(kept) < len(data):
                self.full = True
                log.write(
                    f"\n[lab: this trial's log passed {LOG_LIMIT_BYTES // 2**20} MB; the rest is left out]\n".encode()
                )

    def copy(self, stream: Any) -> None:
        """Append what `stream` (bytes) gives until it ends (a thread's work), decoded as UTF-8."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for chunk in iter(lambda: stream.read1(65536), b""):
            self.write(decoder.decode(chunk))
        self.write(decoder.decode(b"", final=True))


def read_from(path: Path, offset: int) -> str:
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


def last_lines(text: str, count: int = ERROR_LINES) -> str:
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-count:])


class RunnerProcess:
    """This side of a slot's runner (`python -m toolkit.sweeps.runner`): jobs in, JSON answers out.

    It runs in a session of its own, so Ctrl-C in a terminal reaches the dispatcher only (which stops its
    trials); its stderr (the kernels' own diagnostics) goes to a private temporary file."""

    def __init__(self, argv: list[str], env: dict[str, str] | None, *, local: bool = True) -> None:
        self.local = local  # False: the runner runs on a worker (argv is its SSH session); its PIDs are the worker's
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 -- held while the runner lives; closed by _release
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=env,
            start_new_session=True,
        )
        self.answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.kernel_pid = 0  # the running trial's kernel, as the runner said (on the runner's machine)
        self.exited_at = 0.0  # when answer() first saw the runner's process ended
        self.warm_start = False  # whether the last trial's kernel was the warm one
        threading.Thread(target=self._read, name="runner-answers", daemon=True).start()

    def _read(self) -> None:
        """Answers, until the runner's output ends; this thread owns the output pipe and closes it (closing a
        pipe another thread is reading would wait for that read, which waits for whatever holds the pipe)."""
        stdout = self.process.stdout
        assert stdout is not None  # noqa: S101
        with contextlib.suppress(ValueError, OSError), stdout:
            while line := stdout.readline(ANSWER_LIMIT_BYTES):
                if not line.endswith(b"\n") and len(line) >= ANSWER_LIMIT_BYTES:
                    while (rest := stdout.readline(ANSWER_LIMIT_BYTES)) and not rest.endswith(b"\n"):
                        pass  # the rest of an answer too long to be one
                    self.answers.put({"event": "oversized"})
                    continue
                with contextlib.suppress(ValueError):
                    answer = json.loads(line)
                    if isinstance(answer, dict):
                        self.answers.put(answer)
        self.answers.put(None)  # the runner is gone

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, message: dict[str, Any]) -> bool:
        """Hand the runner a job; False when it is gone."""
        assert self.process.stdin is not None  # noqa: S101
        try:
            self.process.stdin.write(json.dumps(message).encode() + b"\n")
            self.process.stdin.flush()
        except OSError:
            return False
        return True

    def answer(self, timeout: float) -> dict[str, Any] | None:
        """The runner's next answer; {} when none came within `timeout`, None when it has gone away (its output
        ended, or its process ended GONE_AFTER_EXIT_S ago and said nothing since)."""
        try:
            return self.answers.get(timeout=timeout)
        except queue.Empty:
            pass
        if self.process.poll() is None:
            self.exited_at = 0.0
            return {}
        self.exited_at = self.exited_at or time.monotonic()
        return None if time.monotonic() - self.exited_at >= GONE_AFTER_EXIT_S else {}

    def why_gone(self) -> str:
        """What the runner said last, and how it ended."""
        code = self.process.wait()
        self.stderr.seek(0)
        said = last_lines(self.stderr.read().decode(errors="replace"))
        how = f"killed by signal {-code}" if code < 0 else f"exited with {code}"
        self._release()
        return f"the slot's runner {how}" + (f": {said}" if said else "")

    def kill(self) -> None:
        """Kill the runner, its kernels (the trial's and the warm one) and everything they started."""
        kill_tree(self.process.pid)
        self.process.wait()
        self._release()

    def close(self, grace_s: float = 10.0) -> None:
        """Stop the runner as its owner going away would: its input ends and it kills its kernels."""
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None  # noqa: S101
            self.process.stdin.close()
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            kill_tree(self.process.pid)
            self.process.wait()
        self._release()

    def _release(self) -> None:
        for stream in (self.process.stdin, self.stderr):  # stdout: the reader thread closes it
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()


def runner_job(job: Job) -> dict[str, Any]:
    """A job as the runner takes it: absolute paths, the parameters as papermill's YAML."""
    import yaml

    notebook = job.notebook.resolve()
    return {
        "notebook": str(notebook),
        "output": str(job.output.resolve()),
        "parameters": yaml.safe_dump(job.parameters),
        "env": dict(job.env),
        "log": str(job.log.resolve()) if job.log else None,
        "cwd": str((job.cwd or notebook.parent).resolve()),
        "kernel_cwd": str(notebook.parent),  # the same for every trial: the next trial's warm kernel fits
        "kernel": job.kernel,
    }


def python_notebook(notebook: Path) -> bool:
    """Whether a notebook's kernel is Python (what the runner's warm kernels are); unknown counts as Python."""
    try:
        metadata = json.loads(notebook.read_text()).get("metadata", {})
    except (OSError, ValueError, AttributeError):
        return True
    language = (metadata.get("kernelspec") or {}).get("language") or (metadata.get("language_info") or {}).get("name")
    return str(language or "python").lower() == "python"


def drive(
    runner: RunnerProcess, job: Job, cancel: threading.Event, message: dict[str, Any] | None = None
) -> tuple[Outcome, bool]:
    """Run one job on a runner (as `message` when given: a remote runner's paths) and wait for its answer; stop
    it on cancel or timeout. The outcome, and whether the runner can take another job (False: it was killed or
    went away). The trial's kernel's PID stays in `runner.kernel_pid`; its log events go to `job.log`."""
    started = time.monotonic()
    runner.kernel_pid = 0
    if not runner.send(message or runner_job(job)):
        return Outcome("died", time.monotonic() - started, runner.why_gone()), False
    kernel = 0
    log = CappedLog(job.log) if job.log is not None else None
    while True:
        answer = runner.answer(POLL_S)
        seconds = time.monotonic() - started
        if answer is None:
            if kernel and runner.local:
                kill_tree(kernel)  # the trial's kernel outlived its runner: it goes too (a worker's: its slot's job)
            return Outcome("died", seconds, runner.why_gone()), False
        event = answer.get("event")
        if event == "started":
            with contextlib.suppress(TypeError, ValueError):
                kernel = runner.kernel_pid = int(answer.get("kernel_pid") or 0)
            runner.warm_start = answer.get("warm") is True
        if event == "log" and log is not None:
            log.write(str(answer.get("text", "")))
        if event == "oversized" and log is not None:
            log.write(
                f"[lab: an answer of the slot's runner passed {ANSWER_LIMIT_BYTES // 1024} KB and was left out]\n"
            )
        if event == "done":
            return done(answer, seconds), True
        stop = "cancelled" if cancel.is_set() else None
        if job.timeout is not None and seconds > job.timeout:
            stop = "timeout"
        if stop:
            runner.kill()
            why = "cancelled" if stop == "cancelled" else f"the trial ran longer than --timeout {job.timeout:g} s"
            return Outcome(
                stop, time.monotonic() - started, why if stop == "cancelled" else why + " and was stopped"
            ), False


def done(answer: dict[str, Any], seconds: float) -> Outcome:
    """A runner's "done" answer as an outcome: only one a runner may give, its error printable and bounded."""
    kind = answer.get("kind")
    error = printable(str(answer.get("error", "")))[-ERROR_LIMIT_CHARS:]
    if kind not in RUNNER_OUTCOMES:
        told = printable(repr(kind))[:60]
        return Outcome("died", seconds, f"the slot's runner answered an outcome lab does not know ({told}): {error}")
    return Outcome(str(kind), seconds, error)


def own_folder(job: Job) -> Job:
    """The job run in a working folder of its own, the notebook's neighbours in it (`toolkit.sweeps.workdir`)."""
    notebook_dir = job.notebook.resolve().parent
    folder = workdir.make(notebook_dir, workdir.folder_of(job.output.resolve()))
    env = {**job.env, workdir.NOTEBOOK_DIR_ENV: str(notebook_dir), workdir.TRIAL_DIR_ENV: str(folder)}
    return replace(job, cwd=folder, env=env)


@dataclass
class LocalSlot:
    """A slot on this machine: a runner that keeps the next kernel warm (or, with `warm=False`, a papermill
    process per trial, kernel start included: the baseline of benchmarks/dispatch_overhead.py)."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    usd_per_hour: float | None = None  # this slot's share of the machine's price (None: not priced)
    warm: bool = True
    runner: RunnerProcess | None = field(default=None, init=False, repr=False, compare=False)

    def run(self, job: Job, cancel: threading.Event) -> Outcome:
        job.output.parent.mkdir(parents=True, exist_ok=True)
        if job.log:
            job.log.parent.mkdir(parents=True, exist_ok=True)
        job = own_folder(job)
        if not self.warm or not python_notebook(job.notebook):
            return self._run_papermill(job, cancel)  # the runner puts a trial's variables in with Python
        if self.runner is None or not self.runner.alive():
            self.runner = RunnerProcess(
                [sys.executable, "-m", "toolkit.sweeps.runner"],
                environment.for_kernels(self.env),  # not the caller's secrets; the trial's come with its job
            )
        outcome, usable = drive(self.runner, job, cancel)
        if not usable:
            self.runner = None
        return outcome

    def close(self) -> None:
        """Stop the runner and its warm kernel (the sweep is over)."""
        runner, self.runner = self.runner, None
        if runner is not None:
            runner.close()

    def _run_papermill(self, job: Job, cancel: threading.Event) -> Outcome:
        import yaml

        with tempfile.TemporaryDirectory(prefix="lab-trial-") as scratch:
            params_file = Path(scratch) / "parameters.yaml"
            params_file.write_text(yaml.safe_dump(job.parameters))
            stderr_path = job.log or Path(scratch) / "stderr.txt"
            argv = [
                sys.executable,
                "-m",
                "papermill",
                str(job.notebook),
                str(job.output),
                "-f",
                str(params_file),
                "--cwd",
                str(job.cwd or job.notebook.parent),
                "--no-progress-bar",
                *(["--log-output"] if job.log else []),
                *(["-k", job.kernel] if job.kernel else []),
            ]
            env = environment.for_kernels(self.env, job.env)  # not the caller's secrets
            started = time.monotonic()
            with stderr_path.open("ab") as stderr:
                log_start = stderr.tell()
                process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    env=env,
                    start_new_session=True,
                )
                ended = self._wait(process, job, cancel, started)
            seconds = time.monotonic() - started
            if ended:
                return Outcome(
                    ended,
                    seconds,
                    "cancelled"
                    if ended == "cancelled"
                    else f"the trial ran longer than --timeout {job.timeout:g} s and was stopped",
                )
            log = read_from(stderr_path, log_start)
        if process.returncode == 0:
            return Outcome("ok", seconds)
        if process.returncode < 0:
            return Outcome("died", seconds, f"papermill was killed by signal {-process.returncode}")
        if kernel_died(process.returncode, log):
            return Outcome(
                "died", seconds, last_lines(log) or f"the kernel died (papermill exited with {process.returncode})"
            )
        return Outcome("failed", seconds, last_lines(log) or f"papermill exited with {process.returncode}")

    @staticmethod
    def _wait(process: subprocess.Popen, job: Job, cancel: threading.Event, started: float) -> str | None:
        """Wait for papermill; stop it (and its kernel) on cancel or timeout, saying which."""
        while True:
            try:
                process.wait(timeout=POLL_S)
                return None
            except subprocess.TimeoutExpired:
                pass
            if cancel.is_set():
                kill_tree(process.pid)
                process.wait()
                return "cancelled"
            if job.timeout is not None and time.monotonic() - started > job.timeout:
                kill_tree(process.pid)
                process.wait()
                return "timeout"


def price_slots(slot_list: list[Any], hourly: Callable[[str], float | None], host_of: Callable[[Any], str]) -> None:
    """Give each slot its share of its host's price per hour: the host's price over the slots it runs."""
    on_host: dict[str, int] = {}
    for slot in slot_list:
        on_host[host_of(slot)] = on_host.get(host_of(slot), 0) + 1
    prices = {host: hourly(host) for host in on_host}
    for slot in slot_list:
        price = prices[host_of(slot)]
        slot.usd_per_hour = None if price is None else price / on_host[host_of(slot)]


def local_slots(parallel: int, gpus: list[str] | None, runs_per_gpu: int) -> list[LocalSlot]:
    """`parallel` slots; with GPUs, each slot sees one GPU and each GPU takes `runs_per_gpu` slots."""
    if not gpus:
        return [LocalSlot(name=f"slot-{i}") for i in range(parallel)]
    layout = [gpu for gpu in gpus for _ in range(runs_per_gpu)]
    return [
        LocalSlot(name=f"gpu{gpu}-{i}", env={"CUDA_VISIBLE_DEVICES": gpu})
        for i, gpu in enumerate(layout[:parallel] if parallel else layout)
    ]
