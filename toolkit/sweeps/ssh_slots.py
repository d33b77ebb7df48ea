"""Slots on remote workers: the notebook goes to the worker, papermill runs there, the result comes back.

A worker gives `lab:runsPerGpu` slots per GPU (each sees its GPU through CUDA_VISIBLE_DEVICES), or
`lab:runsPerGpu` slots when it has no GPU. A trial runs in ~/.lab-trials/<run id> as the login user,
with the worker's /etc/lab/lab.env (which points MLFLOW_TRACKING_URI at the tracker's internal address)
and a marker in /var/lib/lab/trials/ that keeps the idle self-shutdown away while it runs. A worker that
stops answering (powered off, network gone) makes the slot report `lost`, so the sweep re-runs the trial
on another slot.

~/.lab-trials holds notebooks and their outputs, so it is the login user's alone (0700). Before each trial
the slot checks it: a folder of the user's with a wider mode (an older lab made it 1777) is narrowed to 0700;
a symlink, a folder of another user, or one holding another user's files (planted while it was open) is
refused with what to do, never used. Every path in the scripts sent to the worker is quoted.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import subprocess
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.errors import LabError
from toolkit.hosts import ssh as remote
from toolkit.sweeps import slots, workdir

TRIALS_DIR = ".lab-trials"  # in the login user's home (ssh starts there): private to that user (0700)
MARKERS_DIR = "/var/lib/lab/trials"
PAPERMILL = "/opt/lab/venv/bin/papermill"
PYTHON = "/opt/lab/venv/bin/python"  # the lab's venv on a worker: the slot's runner runs with it
ENV_FILE = "/etc/lab/lab.env"
# Variables the worker decides for itself (its own view of the tracker), not the dispatcher.
WORKER_OWNED = ("MLFLOW_TRACKING_URI",)
# A trial's id names its folder and its marker: an MLflow run id (hex), or the fallback's milliseconds.
TRIAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# After an SSH session to a worker was cut, how long before asking whether the worker still answers: a worker
# shutting down (preempted, powered off) may accept one more connection before its sshd stops.
SESSION_CUT_GRACE_S = 5.0
SIGNALLED = 128  # a shell's exit status above this: the command was killed by a signal (128 + its number)
# What the slot's send script says when ~/.lab-trials cannot be trusted (the line starts with this).
REFUSED = "lab-trials:"
FETCH_STALL_S = 60.0  # an executed notebook's fetch fails when no byte of it has come for this long
OUTPUT_LIMIT_BYTES = (
    128 * 1024 * 1024
)  # an executed notebook past this fails its trial (it is kept twice: out/, MLflow)
# The lab's own files in a trial's folder, hidden so that none is ever one of the notebook's neighbouring files
# (`toolkit.sweeps.workdir.sent` leaves hidden files out): a `parameters.yaml` of the researcher's stays theirs.
NOTEBOOK = ".lab-notebook.ipynb"
OUTPUT = ".lab-output.ipynb"
PARAMETERS = ".lab-parameters.yaml"


def send_script(trial_id: str, trials_dir: str = TRIALS_DIR) -> str:
    """The worker's side of sending a trial: check ~/.lab-trials (see the module's notes), make the trial's
    own folder in it, and unpack the tar on stdin there. Refusals are one line on stderr starting REFUSED."""
    folder = shlex.quote(trials_dir)
    trial = shlex.quote(f"{trials_dir}/{trial_id}")
    return (
        "umask 077; "
        f"if [ -L {folder} ] || {{ [ -e {folder} ] && {{ [ ! -d {folder} ] || [ ! -O {folder} ]; }}; }}; then "
        f"echo '{REFUSED} ~/{trials_dir} is not a folder of '\"$(id -un)\" >&2; exit 1; fi; "
        f"mkdir -p {folder} || exit 1; "
        f'if [ -n "$(find {folder} -mindepth 1 ! -user "$(id -u)" -print -quit)" ]; then '
        f"echo '{REFUSED} ~/{trials_dir} holds files of other users' >&2; exit 1; fi; "
        f"chmod 700 {folder} && rm -rf {trial} && mkdir {trial} && tar -C {folder} -xf -"
    )


def write_trial(tar: tarfile.TarFile, trial_id: str, job: slots.Job) -> None:
    """A trial's folder as the send script unpacks it: `trial_id`/ with copies of the notebook's neighbouring files,
    the notebook and its parameters (under the lab's hidden names)."""
    import yaml

    folder = tarfile.TarInfo(trial_id)
    folder.type, folder.mode, folder.mtime = tarfile.DIRTYPE, 0o700, int(time.time())
    tar.addfile(folder)
    base = job.notebook.parent
    for path in workdir.sent(base):
        tar.add(path, arcname=f"{trial_id}/{path.relative_to(base).as_posix()}", recursive=False)
    for name, data in ((NOTEBOOK, job.notebook.read_bytes()), (PARAMETERS, yaml.safe_dump(job.parameters).encode())):
        info = tarfile.TarInfo(f"{trial_id}/{name}")
        info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
        tar.addfile(info, io.BytesIO(data))


def run_script(
    env: dict[str, str],
    folder: str,
    trial_id: str,
    *,
    env_file: str = ENV_FILE,
    markers_dir: str = MARKERS_DIR,
    papermill: str = PAPERMILL,
    log_output: bool = False,
    kernel: str | None = None,
) -> str:
    """The worker's side of running a trial: the worker's environment, the trial's on top, a marker holding
    the shell's PID while papermill runs in the trial's folder."""
    source = shlex.quote(env_file)
    marker = shlex.quote(f"{markers_dir}/{trial_id}")
    command = shlex.join(
        [
            papermill,
            NOTEBOOK,
            OUTPUT,
            "-f",
            PARAMETERS,
            "--cwd",
            ".",
            "--no-progress-bar",
            *(["--log-output"] if log_output else []),
            *(["-k", kernel] if kernel else []),
        ]
    )
    return (
        f"set -a; [ -r {source} ] && . {source}; set +a; {exports(env)}"
        f"cd {shlex.quote(folder)} || exit 97; "
        f'export {workdir.NOTEBOOK_DIR_ENV}="$PWD" {workdir.TRIAL_DIR_ENV}="$PWD"; '
        f"echo $$ > {marker} 2>/dev/null; trap {shlex.quote(f'rm -f {marker}')} EXIT; "
        f"{command} >/dev/null"
    )


def exports(env: dict[str, str]) -> str:
    """`export NAME=value; ` for the variables (names checked: they are put in a shell script)."""
    bad = [name for name in env if not ENV_NAME.fullmatch(name)]
    if bad:
        raise LabError(f"not a variable name: {bad[0]!r}")
    return f"export {' '.join(f'{name}={shlex.quote(value)}' for name, value in env.items())}; " if env else ""


def runner_script(
    env: dict[str, str], *, env_file: str = ENV_FILE, trials_dir: str = TRIALS_DIR, python: str = PYTHON
) -> str:
    """The worker's side of a slot's runner (toolkit.sweeps.runner): the worker's environment and the slot's
    (CUDA_VISIBLE_DEVICES), in ~/.lab-trials (made and checked by the first trial's send script)."""
    source = shlex.quote(env_file)
    return (
        f"set -a; [ -r {source} ] && . {source}; set +a; {exports(env)}"
        f"cd {shlex.quote(trials_dir)} || exit 97; exec {shlex.quote(python)} -m toolkit.sweeps.runner"
    )


@dataclass
class SshSlot:
    """One slot on a worker, reached over SSH. A Python notebook's trials run in the slot's runner on the worker
    (one SSH session for the slot's life: the next trial's kernel starts while one runs); others, and every trial
    with `warm=False`, in a papermill process of their own."""

    name: str
    access: remote.Access
    host: remote.Host
    env: dict[str, str] = field(default_factory=dict)
    usd_per_hour: float | None = None  # this slot's share of the worker's price (None: not priced)
    warm: bool = True  # False: a papermill process per trial, kernel start included
    runner: slots.RunnerProcess | None = field(default=None, init=False, repr=False, compare=False)

    def run(self, job: slots.Job, cancel: threading.Event) -> slots.Outcome:
        trial_id = job.env.get("MLFLOW_RUN_ID") or f"{int(time.time() * 1000)}"
        if not TRIAL_ID.fullmatch(trial_id):
            raise LabError(f"not a run id: {trial_id!r}")
        folder = f"{TRIALS_DIR}/{trial_id}"
        started = time.monotonic()
        try:
            with tempfile.TemporaryDirectory(prefix="lab-trial-") as scratch:
                self._send(trial_id, job)
                stderr_path = job.log or Path(scratch) / "stderr.txt"
                stderr_path.parent.mkdir(parents=True, exist_ok=True)
                if self.warm and slots.python_notebook(job.notebook):
                    return self._run_warm(job, folder, trial_id, cancel, started)
                log_start = stderr_path.stat().st_size if stderr_path.exists() else 0
                ended, code = self._execute(job, folder, trial_id, cancel, started, stderr_path)
                log = slots.read_from(stderr_path, log_start)
            seconds = time.monotonic() - started
            if ended:
                why = "cancelled" if ended == "cancelled" else f"the trial ran longer than --timeout {job.timeout:g} s"
                return slots.Outcome(ended, seconds, why if ended == "cancelled" else why + " and was stopped")
            if code == 255 or code > SIGNALLED:  # the session was cut, or papermill was killed: not the notebook
                time.sleep(SESSION_CUT_GRACE_S)  # a worker shutting down may still answer for a moment
                if not self._answers():
                    return slots.Outcome("lost", seconds, f"{self.host.name} stopped answering")
                if code == 255 or not slots.kernel_died(code, log):
                    why = "the SSH session was cut" if code == 255 else f"papermill was killed (exit {code})"
                    return slots.Outcome("died", seconds, f"{why} on {self.host.name}: {slots.last_lines(log)}")
            fetch_error = self._fetch(folder, job.output)
            with contextlib.suppress(LabError):
                remote.run(self.access, self.host, ["rm", "-rf", folder], check=False, timeout=30)
        except remote.Unreachable as exc:
            return slots.Outcome("lost", time.monotonic() - started, exc.one_line())
        if code == 0 and fetch_error:
            return slots.Outcome("failed", seconds, fetch_error)  # this trial only: the sweep goes on
        if code == 0:
            return slots.Outcome("ok", seconds)
        if slots.kernel_died(code, log):
            return slots.Outcome(
                "died", seconds, slots.last_lines(log) or f"the kernel died (papermill exited with {code})"
            )
        return slots.Outcome("failed", seconds, slots.last_lines(log) or f"papermill exited with {code}")

    def close(self) -> None:
        """Stop the slot's runner on the worker, and its warm kernel (the sweep is over)."""
        runner, self.runner = self.runner, None
        if runner is not None:
            runner.close()

    # -- a trial in the slot's runner ------------------------------------------------------------
    def _run_warm(
        self, job: slots.Job, folder: str, trial_id: str, cancel: threading.Event, started: float
    ) -> slots.Outcome:
        if self.runner is None or not self.runner.alive():
            script = runner_script({k: v for k, v in self.env.items() if k not in WORKER_OWNED})
            # Its own connection: the session lives as long as the slot, and the worker's end must end it.
            argv = [*self.access.ssh(self.host, extra=remote.OWN_CONNECTION), "--", script]
            self.runner = slots.RunnerProcess(argv, None, local=False)
        runner = self.runner
        outcome, usable = slots.drive(runner, job, cancel, self._remote_job(job, trial_id))
        if not usable:
            self.runner = None
        seconds = time.monotonic() - started
        if outcome.kind in ("cancelled", "timeout"):
            self._kill_kernel(runner.kernel_pid, trial_id)  # the session's end stops the runner; this, for sure
            return slots.Outcome(outcome.kind, seconds, outcome.error)
        if not usable:  # the session was cut, or the runner was killed (a worker shutting down kills it first)
            time.sleep(SESSION_CUT_GRACE_S)
            if not self._answers():
                return slots.Outcome("lost", seconds, f"{self.host.name} stopped answering")
            return slots.Outcome("died", seconds, f"on {self.host.name}: {outcome.error}")
        fetch_error = self._fetch(folder, job.output)
        with contextlib.suppress(LabError):
            remote.run(self.access, self.host, ["rm", "-rf", folder], check=False, timeout=30)
        if outcome.kind == "ok" and fetch_error:
            return slots.Outcome("failed", seconds, fetch_error)
        return slots.Outcome(outcome.kind, seconds, outcome.error)

    def _remote_job(self, job: slots.Job, trial_id: str) -> dict[str, object]:
        """The job as the worker's runner takes it: paths in ~/.lab-trials, the worker's own tracker address."""
        import yaml

        env = {k: v for k, v in job.env.items() if k not in WORKER_OWNED}
        exports(env)  # the names are checked as for a script
        return {
            "notebook": f"{trial_id}/{NOTEBOOK}",
            "output": f"{trial_id}/{OUTPUT}",
            "parameters": yaml.safe_dump(job.parameters),
            "env": env,
            "log": "-" if job.log else None,
            "cwd": trial_id,
            "kernel_cwd": ".",
            "kernel": job.kernel,
            "marker": f"{MARKERS_DIR}/{trial_id}",
        }

    def _kill_kernel(self, pid: int, trial_id: str) -> None:
        """Kill a trial's kernel on the worker (its own session: its process group) and drop its marker."""
        marker = shlex.quote(f"{MARKERS_DIR}/{trial_id}")
        kill = f"kill -KILL -- -{pid} {pid} 2>/dev/null; " if pid > 0 else ""
        with contextlib.suppress(LabError):
            remote.run(self.access, self.host, ["sh", "-c", f"{kill}rm -f {marker}; true"], check=False, timeout=30)

    # -- the steps ------------------------------------------------------------------------------
    def _send(self, trial_id: str, job: slots.Job) -> None:
        """The trial's folder onto the worker, as one tar on the send script's stdin: the notebook's neighbouring
        files (`toolkit.sweeps.workdir.sent`: the trial works among copies of them), then the lab's own."""
        with subprocess.Popen(
            [*self.access.ssh(self.host), "--", send_script(trial_id)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        ) as process:
            assert process.stdin is not None and process.stderr is not None  # noqa: S101
            # A refusing or vanished worker stops reading: its exit status says which.
            with (
                contextlib.suppress(BrokenPipeError),
                tarfile.open(fileobj=process.stdin, mode="w|", dereference=True) as tar,
            ):
                write_trial(tar, trial_id, job)
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()
            said_bytes = process.stderr.read()
        sent = subprocess.CompletedProcess(process.args, process.returncode, b"", said_bytes)
        if sent.returncode == 255:
            raise remote.Unreachable(self.host, sent.stderr.decode(errors="replace").strip() or "no answer")
        if sent.returncode != 0:
            said = sent.stderr.decode(errors="replace").strip()
            if said.startswith(REFUSED):
                raise LabError(
                    f"{self.host.name}: {said.removeprefix(REFUSED).strip()}, so no trial runs there",
                    hint=f"see what is in it, then move it away (`lab ssh {self.host.name} -- mv {TRIALS_DIR} "
                    f"{TRIALS_DIR}.old`); the next trial makes a private one",
                )
            raise LabError(f"cannot send the notebook to {self.host.name}: {said}")

    def _script(self, job: slots.Job, folder: str, trial_id: str) -> str:
        env = {k: v for k, v in {**self.env, **job.env}.items() if k not in WORKER_OWNED}
        return run_script(env, folder, trial_id, log_output=job.log is not None, kernel=job.kernel)

    def _execute(
        self,
        job: slots.Job,
        folder: str,
        trial_id: str,
        cancel: threading.Event,
        started: float,
        stderr_path: Path,
    ) -> tuple[str | None, int]:
        argv = [*self.access.ssh(self.host), "--", self._script(job, folder, trial_id)]
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # The worker's output is not trusted: kept up to the log's limit, without terminal control sequences.
        copier = threading.Thread(target=slots.CappedLog(stderr_path).copy, args=(process.stderr,), daemon=True)
        copier.start()
        try:
            while True:
                try:
                    return None, process.wait(timeout=slots.POLL_S * 4)
                except subprocess.TimeoutExpired:
                    pass
                stop = "cancelled" if cancel.is_set() else None
                if job.timeout is not None and time.monotonic() - started > job.timeout:
                    stop = "timeout"
                if stop:
                    self._kill_remote(job.env.get("MLFLOW_RUN_ID", ""))
                    process.kill()
                    process.wait()
                    return stop, -1
        finally:
            copier.join(timeout=10)
            if process.stderr is not None:
                process.stderr.close()

    def _kill_remote(self, run_id: str) -> None:
        """Kill every process of the trial on the worker: those whose environment carries its run id
        (papermill and its kernel, which runs in a session of its own)."""
        if not run_id:
            return
        script = (
            f"for e in /proc/[0-9]*/environ; do "
            f"if tr '\\0' '\\n' < $e 2>/dev/null | grep -qx {shlex.quote('MLFLOW_RUN_ID=' + run_id)}; then "
            f"p=${{e#/proc/}}; kill -KILL ${{p%/environ}} 2>/dev/null; fi; done; true"
        )
        with contextlib.suppress(LabError):
            remote.run(self.access, self.host, ["sh", "-c", script], check=False, timeout=30)

    def answers(self) -> bool:
        """Whether the worker answers SSH (a lost slot rejoins the sweep once it does)."""
        return self._answers()

    def _answers(self) -> bool:
        try:
            remote.run(self.access, self.host, ["true"], timeout=remote.CONNECT_TIMEOUT_S + 5)
        except LabError:
            return False
        return True

    def _fetch(self, folder: str, output: Path, stall_s: float = FETCH_STALL_S, limit: int = OUTPUT_LIMIT_BYTES) -> str:
        """Stream the executed notebook from the worker into `output`; '' when it came, else why not. There is
        no fixed time limit: a fetch fails when no byte has come for `stall_s` (SSH's keepalives notice a
        worker that went away sooner). `output` is replaced only by a complete copy."""
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(output.name + ".partial")
        argv = self.access.ssh(self.host, ["cat", f"{folder}/{OUTPUT}"])
        try:
            with partial.open("wb") as sink, tempfile.TemporaryFile() as errors:
                process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=errors)
                streamed = self._stream(process, partial, stall_s, limit)
                if streamed == "stalled":
                    return f"fetching the executed notebook from {self.host.name} stalled: no byte for {stall_s:g} s"
                if streamed == "too big":
                    return (
                        f"the executed notebook on {self.host.name} passed {limit / 2**20:g} MB, so the trial fails "
                        "(print less; log big results to its MLflow run as artifacts)"
                    )
                errors.seek(0)
                said = slots.last_lines(errors.read().decode(errors="replace"), 1)
            if process.returncode != 0:
                return (
                    f"cannot fetch the executed notebook from {self.host.name}: {said or f'exit {process.returncode}'}"
                )
            if partial.stat().st_size == 0:
                return f"the executed notebook on {self.host.name} is empty"
            partial.replace(output)
        except OSError as exc:
            return f"cannot store the executed notebook from {self.host.name} in {output}: {exc.strerror or exc}"
        finally:
            partial.unlink(missing_ok=True)
        return ""

    @staticmethod
    def _stream(process: subprocess.Popen, sink: Path, stall_s: float, limit: int = OUTPUT_LIMIT_BYTES) -> str:
        """Wait for a fetch while bytes keep arriving: "done", or (the fetch killed) "stalled" when they stop or
        "too big" past `limit` bytes."""
        size, moved = -1, time.monotonic()
        while True:
            try:
                process.wait(timeout=min(0.25, stall_s))
                return "too big" if sink.stat().st_size > limit else "done"
            except subprocess.TimeoutExpired:
                pass
            now = sink.stat().st_size
            if now != size:
                size, moved = now, time.monotonic()
            ended = "too big" if now > limit else "stalled" if time.monotonic() - moved > stall_s else None
            if ended:
                process.kill()
                process.wait()
                return ended


def worker_gpus(access: remote.Access, host: remote.Host) -> int:
    """How many GPUs the worker play found on a worker (its /etc/lab/worker.json)."""
    text = remote.run(access, host, ["cat", "/etc/lab/worker.json"], check=False, timeout=30).stdout
    try:
        return int(json.loads(text).get("gpus", 0))
    except (json.JSONDecodeError, ValueError, TypeError, AttributeError):
        raise LabError(f"{host.name} is not configured as a worker yet", hint="run `lab up` first") from None


def ssh_slots(access: remote.Access, workers: list[remote.Host], runs_per_gpu: int) -> list[SshSlot]:
    """Every worker's slots: runs_per_gpu per GPU (or per worker without one), interleaved across
    workers so a small --parallel still spreads over machines."""
    per_worker: list[list[SshSlot]] = []
    for host in workers:
        gpus = worker_gpus(access, host)
        if gpus:
            made = [
                SshSlot(f"{host.name}/gpu{g}-{r}", access, host, {"CUDA_VISIBLE_DEVICES": str(g)})
                for g in range(gpus)
                for r in range(runs_per_gpu)
            ]
        else:
            made = [SshSlot(f"{host.name}/{r}", access, host) for r in range(runs_per_gpu)]
        per_worker.append(made)
    longest = max((len(g) for g in per_worker), default=0)
    return [group[i] for i in range(longest) for group in per_worker if i < len(group)]
