"""Slots: where one trial's notebook runs. A slot takes a job and returns how it ended.

The local slot runs papermill as its own process, with the caller's allow-listed variables
(`toolkit.environment`: never the caller's secrets), the slot's environment (for example CUDA_VISIBLE_DEVICES)
and the trial's (MLFLOW_TRACKING_URI, MLFLOW_RUN_ID) on top. Remote slots (SSH to a worker) implement the same
`run`.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from toolkit import environment

ERROR_LINES = 12
POLL_S = 0.05
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


def read_from(path: Path, offset: int) -> str:
    with path.open("rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


def last_lines(text: str, count: int = ERROR_LINES) -> str:
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-count:])


@dataclass
class LocalSlot:
    """A slot on this machine: papermill in a process of its own."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    usd_per_hour: float | None = None  # this slot's share of the machine's price (None: not priced)

    def run(self, job: Job, cancel: threading.Event) -> Outcome:
        import yaml

        job.output.parent.mkdir(parents=True, exist_ok=True)
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
                str(job.notebook.parent),
                "--no-progress-bar",
                *(["--log-output"] if job.log else []),
            ]
            env = environment.for_kernels(self.env, job.env)  # not the caller's secrets
            started = time.monotonic()
            stderr_path.parent.mkdir(parents=True, exist_ok=True)
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
