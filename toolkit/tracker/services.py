"""Detached local services (the MLflow server, JupyterLab): start, health-check, find, stop.

Each running service has a record `<run_dir>/<name>.json` (pid, the process's start time, port, URL,
log). The start time guards against a recycled PID: a record whose process is gone, or whose PID now
belongs to another process, is stale. On Linux the start is compared as the kernel keeps it (clock ticks
after boot): a wall-clock start (psutil's create_time, boot time + ticks) moves when NTP or a suspend moves
the clock, by a whole second at once (/proc/stat's btime is whole seconds), and a live service then looked
gone (seen in CI: `lab up` reported mlflow "exited while starting" while it started).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.errors import LabError

if TYPE_CHECKING:
    import psutil

STOP_TIMEOUT_S = 15.0  # SIGKILL this long after SIGTERM (the README's promise)
STOP_TIMEOUT_ENV = "LAB_STOP_TIMEOUT_S"  # tests wait less (the promise itself is checked with this unset too)
LOG_TAIL_LINES = 15


@dataclass(frozen=True)
class Record:
    name: str
    pid: int
    create_time: float
    port: int
    url: str
    health_url: str
    log: str
    started: str  # ISO 8601, UTC
    boot_start: float | None = None  # Linux: seconds after boot the process started; None in older records

    def is_process(self, pid_start: tuple[float | None, float]) -> bool:
        """Whether a process that started at ``pid_start`` (boot_start, create_time) is this record's."""
        boot_start, create_time = pid_start
        if self.boot_start is not None and boot_start is not None:
            return abs(boot_start - self.boot_start) < 0.05  # ticks are 1/100 s; recycled PIDs differ by more
        return abs(create_time - self.create_time) < 1.0

    @property
    def uptime_s(self) -> float:
        return (dt.datetime.now(dt.timezone.utc) - dt.datetime.fromisoformat(self.started)).total_seconds()


def record_path(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.json"


def read(run_dir: Path, name: str) -> Record | None:
    path = record_path(run_dir, name)
    try:
        return Record(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        path.unlink(missing_ok=True)  # an unreadable record describes nothing we can manage
        return None


def is_running(record: Record) -> bool:
    """The recorded process still runs (and is the same process, not a recycled PID)."""
    import psutil

    try:
        process = psutil.Process(record.pid)
        return record.is_process(process_start(process)) and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def process_start(process: psutil.Process) -> tuple[float | None, float]:
    """When a process started: (seconds after boot, Linux only, else None; psutil's wall-clock create_time).
    psutil keeps the first to itself (its own process identity uses it), so it is read from /proc here."""
    boot_start = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path(f"/proc/{process.pid}/stat").read_text()
        boot_start = int(stat.rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
    return boot_start, process.create_time()


def forget(run_dir: Path, name: str) -> None:
    record_path(run_dir, name).unlink(missing_ok=True)


def port_holder(port: int, host: str = "127.0.0.1") -> str | None:
    """Who listens on a port, as words ("python3 (pid 123): mlflow server ..."), or None when it is free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            return None
        except OSError:
            pass
    import psutil

    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                process = psutil.Process(conn.pid)
                command = " ".join(process.cmdline())[:80]
                return f"{process.name()} (pid {conn.pid}: {command})"
    return "another process"


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 -- our own http:// URL
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start(
    name: str,
    argv: Sequence[str],
    *,
    run_dir: Path,
    log: Path,
    port: int,
    url: str,
    health_url: str,
    env: Mapping[str, str],
    cwd: Path | None = None,
) -> Record:
    """Start a program detached from this terminal (its own session) and record it."""
    import psutil

    run_dir.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        try:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise LabError(f"cannot start {name}: {exc.strerror or exc}") from None
    boot_start, create_time = process_start(psutil.Process(process.pid))
    record = Record(
        name=name,
        pid=process.pid,
        create_time=create_time,
        boot_start=boot_start,
        port=port,
        url=url,
        health_url=health_url,
        log=str(log),
        started=dt.datetime.now(dt.timezone.utc).isoformat(),
    )
    path = record_path(run_dir, name)
    path.write_text(json.dumps(asdict(record), indent=2))
    return record


def wait_healthy(record: Record, timeout: float, stack_signal: int | None = None) -> float:
    """Poll the health URL until it answers; seconds it took. A process that dies, or never answers,
    is stopped and reported with the end of its log. `stack_signal`: the signal on which the service
    writes its threads' stacks to its log (faulthandler.register); sent when it never answered, so the
    error can say where it was."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not is_running(record):
            lines = [line for line in log_tail(Path(record.log)).splitlines() if line.strip()]
            last = lines[-1].strip() if lines else "no output"
            raise LabError(f"{record.name} exited while starting: {last}", hint=f"see {record.log}")
        if http_ok(record.health_url):
            return time.monotonic() - started
        time.sleep(0.25)
    where = _stuck_at(record, stack_signal) if stack_signal is not None else ""
    stop(record)
    raise LabError(
        f"{record.name} did not answer {record.health_url} within {timeout:g} s{where}", hint=f"see {record.log}"
    )


def _stuck_at(record: Record, stack_signal: int) -> str:
    """Where the service's main thread was: its innermost frame, from the stacks it writes to its log on
    `stack_signal` (", stuck at FILE:LINE in FUNCTION"), or "" when it wrote none in a second."""
    log = Path(record.log)
    try:
        before = log.stat().st_size
        os.kill(record.pid, stack_signal)
    except OSError:
        return ""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        time.sleep(0.1)
        frame = innermost_frame(log, before)
        if frame:
            return f", stuck at {frame}"
    return ""


def innermost_frame(log: Path, offset: int) -> str:
    """The main thread's innermost frame in a faulthandler dump written to `log` after `offset`, as
    "FILE:LINE in FUNCTION"; "" when there is none."""
    try:
        with log.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Current thread") and i + 1 < len(lines):
            match = re.match(r'\s*File "(.+)", line (\d+) in (\S+)', lines[i + 1])
            if match:
                return f"{match[1]}:{match[2]} in {match[3]}"
    return ""


def stop_timeout() -> float:
    """How long a stop waits after SIGTERM: STOP_TIMEOUT_S, or LAB_STOP_TIMEOUT_S seconds when set (tests)."""
    given = os.environ.get(STOP_TIMEOUT_ENV, "")
    try:
        return float(given) if given else STOP_TIMEOUT_S
    except ValueError:
        raise LabError(f"{STOP_TIMEOUT_ENV}={given!r} is not a number of seconds", hint="unset it") from None


def stop(record: Record, timeout: float | None = None) -> str:
    """SIGTERM to the service's process group, then SIGKILL after `timeout` (stop_timeout()). Returns how it
    ended."""
    if timeout is None:
        timeout = stop_timeout()
    if not is_running(record):
        return "not running"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(record) and not _group_alive(record.pid):
            return "stopped"
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(record.pid, signal.SIGKILL)
    return "killed"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
