"""A slot's runner: one long-lived process per slot that keeps the slot's next kernel warm.

`python -m toolkit.sweeps.runner` reads jobs on stdin and answers on stdout, one JSON object a line.
While a trial runs, the runner starts the slot's next kernel and imports the notebook contract's modules
in it (PRELOAD: mlflow, ...), so when the slot is free again the next trial's first cell runs within a
fraction of a second. Each trial still gets a kernel of its own, never used before or after (seeded runs
repeat; GPU memory is handed back): the kernel is shut down when its trial ends.

A kernel costs a Python start and the imports (~2 CPU-seconds with mlflow): on a small machine with many
slots that alone keeps the CPUs busy. So the runner keeps a fork server (`--zygote`): a single-threaded
process that imported ipykernel and PRELOAD once, and forks each new kernel from that state, in a session
of its own, in the notebook's folder, with the slot's environment. A forked kernel is a new process that
never ran anyone's code. It also leaves at exit without the interpreter's teardown (about a second with
mlflow loaded): every exit handler (a notebook's, mlflow's) still runs first. A kernel that is not this
Python's ipykernel (another kernelspec) is started the ordinary way.

The kernel's environment is the runner's (the slot's: allow-listed variables, CUDA_VISIBLE_DEVICES). A
trial's own variables (MLFLOW_RUN_ID, ...) are known only when it starts: they are put in the kernel's
`os.environ` by a silent execution before the notebook's first cell, so they never appear in the executed
notebook.

The same runner runs on a worker for an SSH slot, over one SSH session per slot (`toolkit.sweeps.ssh_slots`):
there the paths are relative to its folder (~/.lab-trials), the trial's log comes back as events, and a marker
file holds the runner's PID while a trial runs (the worker's idle check counts it as a running trial).

Protocol (each a JSON line):
- in: a job {"notebook", "output", "parameters" (YAML text), "env", "log" (a file, "-" for events, or null),
  "cwd" (the trial's folder), optional "kernel" (a kernelspec; default the notebook's), "kernel_cwd" (where
  kernels start, default "cwd"), "marker" (a file holding the runner's PID while the trial runs)};
- out: {"event": "started", "kernel_pid", "warm"} when the job's kernel is chosen, {"event": "log", "text"}
  for each of the trial's log lines when "log" is "-", then {"event": "done", "kind": "ok"|"failed"|"died",
  "error"} when it ended.
stdin closing (the slot closed, or its owner died) stops the runner and every kernel it started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

PRELOAD = ("mlflow", "toolkit.determinism")  # the contract's imports; each only if it is installed
START_TIMEOUT_S = 60
ERROR_LINES = 12


@dataclass(frozen=True)
class KernelSpec:
    """What a kernel is started with, known before its trial: the notebook's kernel and folder."""

    name: str
    cwd: str


def run_sync(function: Callable[..., Any]) -> Callable[..., Any]:
    from jupyter_core.utils import run_sync as wrap

    return wrap(function)


def preload_code(modules: tuple[str, ...] = PRELOAD) -> str:
    """Leave without the interpreter's teardown once every other exit handler ran (registered first), then
    import each module if it is there; no names are left behind in the kernel's namespace."""
    return (
        "def __lab_preload():\n"
        "    import atexit, importlib, os\n"
        "    atexit.register(os._exit, 0)\n"
        f"    for name in {list(modules)!r}:\n"
        "        try:\n"
        "            importlib.import_module(name)\n"
        "        except Exception:\n"
        "            pass\n"
        "__lab_preload()\n"
        "del __lab_preload\n"
    )


def environ_code(env: dict[str, str], cwd: str | None = None) -> str:
    """Put the trial's variables in the kernel's environment (and so in what it starts), and move it to the
    trial's folder (a warm kernel was started before its trial's folder was known)."""
    move = f"__lab_os.chdir({cwd!r})\n" if cwd else ""
    return f"import os as __lab_os\n__lab_os.environ.update({dict(env)!r})\n{move}del __lab_os\n"


def kernel_pid(km: Any) -> int | None:
    return getattr(km.provisioner, "pid", None)


def kill_kernel(km: Any) -> None:
    """Kill a kernel and everything it started, and remove its connection file."""
    from toolkit.sweeps.slots import kill_tree

    pid = kernel_pid(km)
    if pid:
        kill_tree(pid)
    with contextlib.suppress(Exception):
        run_sync(km.shutdown_kernel)(now=True)
    with contextlib.suppress(Exception):
        run_sync(km.cleanup_resources)()


def end_kernel(km: Any) -> None:
    """Shut a kernel down as papermill does (a shutdown request, so exit handlers run: pending uploads of
    checkpoints), then kill whatever it started that is still there."""
    import psutil

    pid = kernel_pid(km)
    children: list[Any] = []
    with contextlib.suppress(psutil.Error, TypeError):
        children = psutil.Process(pid).children(recursive=True)
    with contextlib.suppress(Exception):
        run_sync(km.shutdown_kernel)(now=False)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    kill_kernel(km)


async def _execute_silently(km: Any, code: str, timeout: float) -> None:
    """Run code in the kernel without a trace in its history or execution count; raise if it fails."""
    client = km.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=timeout)
        reply = await client.execute_interactive(
            code, silent=True, store_history=False, allow_stdin=False, timeout=timeout, output_hook=lambda _: None
        )
    finally:
        client.stop_channels()
    content = reply.get("content", {})
    if content.get("status") != "ok":
        raise RuntimeError(f"{content.get('ename', 'error')}: {content.get('evalue', '')}")


def start_kernel(spec: KernelSpec, zygote: Zygote | None = None) -> Any:
    """A started kernel for `spec`, ready, with the contract's modules imported (forked from `zygote` when
    it can be)."""
    import uuid

    from jupyter_client.manager import AsyncKernelManager

    km = AsyncKernelManager(kernel_name=spec.name)
    forked = zygote is not None and zygote.can_start(km.kernel_spec.argv)
    if forked:
        km.kernel_id = str(uuid.uuid4())
        km.provisioner = ForkProvisioner(kernel_id=km.kernel_id, kernel_spec=km.kernel_spec, parent=km)
        km.provisioner.zygote = zygote
    run_sync(km.start_kernel)(cwd=spec.cwd, env=dict(os.environ))
    try:  # a forked kernel has the imports (and the exit) already; it is waited for all the same
        run_sync(_execute_silently)(km, "pass" if forked else preload_code(), START_TIMEOUT_S)
    except BaseException:
        kill_kernel(km)
        raise
    return km


# -- the fork server ---------------------------------------------------------------------------------
class Zygote:
    """The runner's side of its fork server: started on first use, again if it went away."""

    def __init__(self) -> None:
        self.process: Any = None
        self.lock = threading.Lock()

    @staticmethod
    def can_start(argv: list[str]) -> bool:
        """Whether a kernelspec's command is this Python's ipykernel (what the fork server holds)."""
        if len(argv) < 3 or argv[1:3] != ["-m", "ipykernel_launcher"]:
            return False
        # jupyter_client runs a kernelspec's bare `python` as this Python
        this = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
        if argv[0] in this:
            return True
        # Another venv's python is a link to the same interpreter, with other packages: same folder, same file.
        mine, theirs = Path(sys.executable).absolute(), Path(argv[0]).absolute()
        return theirs.parent == mine.parent and os.path.realpath(theirs) == os.path.realpath(mine)

    def fork(self, argv: list[str], cwd: str, env: dict[str, str]) -> int:
        """A new kernel process running `argv`'s ipykernel arguments; its pid."""
        import subprocess

        with self.lock:
            if self.process is None or self.process.poll() is not None:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "toolkit.sweeps.runner", "--zygote"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            request = {"args": argv[3:], "cwd": cwd, "env": env}
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the kernel fork server went away")
        return int(json.loads(line)["pid"])


class ForkedProcess:
    """What jupyter_client's LocalProvisioner needs of a Popen, for a kernel the fork server started (its
    child, not ours: the server reaps it)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.stdin = self.stdout = self.stderr = None

    def poll(self) -> int | None:
        import psutil

        try:
            return 0 if psutil.Process(self.pid).status() == psutil.STATUS_ZOMBIE else None
        except psutil.Error:
            return 0

    def wait(self, timeout: float | None = None) -> int:
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                import subprocess

                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
            time.sleep(0.02)
        return 0

    def send_signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def _fork_provisioner() -> type:
    from jupyter_client.provisioning import LocalProvisioner

    class Provisioner(LocalProvisioner):  # type: ignore[misc]
        zygote: Zygote

        async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
            env = kwargs.get("env") or dict(os.environ)
            pid = self.zygote.fork(cmd, str(kwargs.get("cwd") or Path.cwd()), env)
            self.process = ForkedProcess(pid)
            self.pid = self.pgid = pid  # the kernel leads a session of its own
            self.cwd = kwargs.get("cwd")
            return self.connection_info

    return Provisioner


def ForkProvisioner(**kwargs: Any) -> Any:  # a class, made when jupyter_client is imported
    return _fork_provisioner()(**kwargs)


def zygote_main() -> int:
    """The fork server: import once, then fork a kernel for each request on stdin (pid on stdout)."""
    import atexit

    atexit.register(os._exit, 0)  # inherited by every kernel, runs after all other exit handlers
    for name in PRELOAD:
        with contextlib.suppress(Exception):
            __import__(name)
    from ipykernel import kernelapp

    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _become_kernel(kernelapp, request)
        print(json.dumps({"pid": pid}), flush=True)
    return 0


def _reap(*_: Any) -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _become_kernel(kernelapp: Any, request: dict[str, Any]) -> None:
    """In the forked child: a session of its own, the kernel's folder and environment, then the kernel."""
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(2, 1)  # the fork server's stdout is its answers
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        # ipykernel read JPY_PARENT_PID when the server imported it: name the parent here (the server: the
        # kernel ends when the server does)
        sys.argv = ["ipykernel_launcher", *request["args"], f"--IPKernelApp.parent_handle={os.getppid()}"]
        sys.stdin = open(os.devnull)  # noqa: SIM115, PTH123 -- the kernel's own stdin, for its lifetime
        sys.stdout = os.fdopen(1, "w", buffering=1)
        kernelapp.launch_new_instance()
    finally:
        os._exit(0)


class Runner:
    """The runner's state: the warm kernel (being started in the background) and the one running a trial."""

    def __init__(self, answer: IO[str]) -> None:
        self.answer = answer
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="warm")
        self.zygote = Zygote()
        self.warm: tuple[KernelSpec, Future] | None = None
        self.current: Any = None
        self.marker: Path | None = None  # the running trial's marker file (a runner on a worker)
        self.lock = threading.Lock()

    def say(self, **message: Any) -> None:
        with self.lock:
            self.answer.write(json.dumps(message) + "\n")
            self.answer.flush()

    # -- kernels -------------------------------------------------------------------------------
    def prepare(self, spec: KernelSpec) -> None:
        """Start the slot's next kernel in the background."""
        self.warm = (spec, self.pool.submit(start_kernel, spec, self.zygote))

    def take(self, spec: KernelSpec) -> tuple[Any, bool]:
        """The kernel for a trial of `spec`: the warm one when it fits and lives, else a new one."""
        warm, self.warm = self.warm, None
        if warm is not None:
            made, future = warm
            km = None
            with contextlib.suppress(Exception):
                km = future.result()
            if km is not None and made == spec and run_sync(km.is_alive)():
                return km, True
            if km is not None:
                kill_kernel(km)
        return start_kernel(spec, self.zygote), False

    def stop(self) -> None:
        """Kill every process this runner started: the kernels (the one running and the warm one), the
        fork server, and what they started; drop the running trial's marker."""
        import psutil

        from toolkit.sweeps.slots import kill_tree

        if self.marker is not None:
            with contextlib.suppress(OSError):
                self.marker.unlink(missing_ok=True)

        for child in psutil.Process().children():
            kill_tree(child.pid)

    # -- a job ---------------------------------------------------------------------------------
    def run(self, job: dict[str, Any]) -> None:
        import nbformat
        from papermill.engines import papermill_engines

        try:
            notebook = nbformat.read(job["notebook"], as_version=4)
            name = job.get("kernel") or papermill_engines.nb_kernel_name(engine_name=None, nb=notebook)
            spec = KernelSpec(name, job.get("kernel_cwd") or job["cwd"])
        except Exception as exc:  # an unreadable notebook fails its trial
            self.say(event="done", kind="failed", error=f"cannot read the notebook: {exc}")
            return
        try:
            km, warm = self.take(spec)
        except Exception as exc:  # a kernel that never came up: the slot died, not the notebook
            self.say(event="done", kind="died", error=f"the kernel did not start: {type(exc).__name__}: {exc}")
            return
        self.current = km
        marker = self.marker = Path(job["marker"]) if job.get("marker") else None
        if marker is not None:  # the worker's idle check counts a marker holding a live PID as a running trial
            with contextlib.suppress(OSError):
                marker.write_text(f"{os.getpid()}\n")
        self.say(event="started", kernel_pid=kernel_pid(km), warm=warm)
        self.prepare(spec)  # the next trial's kernel starts while this one runs
        try:
            kind, error = self._execute(km, job)
        finally:
            end_kernel(km)
            self.current = None
            if marker is not None:
                marker.unlink(missing_ok=True)
                self.marker = None
        self.say(event="done", kind=kind, error=error)

    def _execute(self, km: Any, job: dict[str, Any]) -> tuple[str, str]:
        import papermill
        import yaml
        from nbclient.exceptions import DeadKernelError
        from papermill.exceptions import PapermillExecutionError

        from toolkit.sweeps import workdir

        handler = self._log_to(job.get("log"))
        try:
            cwd = str(Path(job["cwd"]).resolve())
            # On a worker the trial's folder holds copies of the notebook's neighbours: it is both folders there
            # (a local slot names the notebook's own folder, `toolkit.sweeps.slots.own_folder`).
            env = {workdir.NOTEBOOK_DIR_ENV: cwd, workdir.TRIAL_DIR_ENV: cwd, **job["env"]}
            run_sync(_execute_silently)(km, environ_code(env, cwd), START_TIMEOUT_S)
            papermill.execute_notebook(
                job["notebook"],
                job["output"],
                parameters=yaml.safe_load(job["parameters"]) or {},
                progress_bar=False,
                log_output=handler is not None,
                km=km,
            )
        except PapermillExecutionError as exc:
            return "failed", self._said(handler, str(exc))
        except DeadKernelError as exc:
            return "died", self._said(handler, f"DeadKernelError: {exc}")
        except Exception as exc:
            text = self._said(handler, "".join(traceback.format_exception_only(type(exc), exc)))
            alive = False
            with contextlib.suppress(Exception):
                alive = run_sync(km.is_alive)()
            return ("failed" if alive else "died"), text
        finally:
            if handler is not None:
                logging.getLogger("papermill").removeHandler(handler)
                handler.close()
        return "ok", ""

    def _log_to(self, path: str | None) -> logging.Handler | None:
        """The trial's output (as papermill --log-output writes it) appended to its log file, or with `-` sent
        back as `log` events (a runner on a worker: the trial's log is kept where the sweep runs)."""
        if not path:
            return None
        handler: logging.Handler = (
            EventLog(self) if path == "-" else logging.FileHandler(path, mode="a", encoding="utf-8")
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.setLevel(logging.INFO)
        logger = logging.getLogger("papermill")
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        return handler

    @staticmethod
    def _said(handler: logging.Handler | None, text: str) -> str:
        """The error in the trial's log (as papermill's traceback would be) and its last lines for the run."""
        if isinstance(handler, EventLog):
            handler.runner.say(event="log", text=text.rstrip() + "\n")
        elif isinstance(handler, logging.FileHandler):
            handler.stream.write(text.rstrip() + "\n")
            handler.flush()
        lines = [line.rstrip() for line in text.splitlines() if line.strip()]
        return "\n".join(lines[-ERROR_LINES:])


class EventLog(logging.Handler):
    """A trial's log lines as `log` events on the runner's answers."""

    def __init__(self, runner: Runner) -> None:
        super().__init__()
        self.runner = runner

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.runner.say(event="log", text=self.format(record) + "\n")


def main() -> int:
    # The protocol gets its own descriptors; kernels inherit none of them (fd 1 writes land on stderr).
    answer = os.fdopen(os.dup(1), "w", encoding="utf-8")
    jobs = os.fdopen(os.dup(0), "r", encoding="utf-8")
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the slot decides when a trial stops
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    runner = Runner(answer)
    queue: list[dict[str, Any]] = []
    arrived = threading.Condition()

    def read() -> None:
        for line in jobs:
            with arrived:
                queue.append(json.loads(line))
                arrived.notify()
        runner.stop()  # stdin closed: the slot is closed, or its owner is gone
        os._exit(0)

    threading.Thread(target=read, name="jobs", daemon=True).start()
    while True:
        with arrived:
            arrived.wait_for(lambda: bool(queue))
            job = queue.pop(0)
        try:
            runner.run(job)
        except Exception as exc:  # a bug here: the trial is run again, and the runner goes on
            runner.say(event="done", kind="died", error=f"the slot's runner failed: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(zygote_main() if sys.argv[1:] == ["--zygote"] else main())
