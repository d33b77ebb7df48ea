#!/usr/bin/python3
"""lab-idle-check: power this worker off once it has been idle for long enough.

lab-idle.timer runs it every ~20 s as root (standard library only). The worker is busy when any of:
  gpu      nvidia-smi reports a GPU's utilization above 0 or a compute process (only where nvidia-smi exists)
  jupyter  a Jupyter kernel's execution_state is "busy" (GET /api/kernels with the lab's token; a Jupyter
           that does not answer counts as not busy)
  trials   a file in the trials folder holds the PID of a live process, or a papermill process runs
  sweeps   a sweep holds this worker: a file hold-<sweep> in the trials folder modified within --hold-minutes
           (the sweep touches it about every minute while it has trials queued or running for this worker, so
           a worker is not powered off between two trials; a sweep that ended or died stops holding it)
  ssh      an ESTABLISHED TCP connection to the local SSH port
When busy, the time goes to the state file. When idle for --minutes since the later of the last activity
and this boot, the reason goes to the log file and the journal and the host powers off.
--minutes 0 turns the check off. --dry-run prints the checks as JSON and changes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

Check = tuple[bool, str]  # (busy, what was seen)


def check_gpu() -> Check:
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return False, "no nvidia-smi"
    try:
        usage = subprocess.run(
            [nvidia_smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
        apps = subprocess.run(
            [nvidia_smi, "--query-compute-apps=pid", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError) as exc:  # a broken driver must not keep a GPU VM up
        return False, f"nvidia-smi failed ({exc.__class__.__name__})"
    used = [u for u in usage if u.isdigit() and int(u) > 0]
    if used or apps:
        return True, f"utilization {','.join(usage)}%, {len(apps)} compute process(es)"
    return False, f"{len(usage)} GPU(s) at 0%, no compute process"


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return values
    for line in lines:
        name, sep, value = line.strip().partition("=")
        if sep and not name.startswith("#"):
            values[name.strip()] = value.strip().strip("\"'")
    return values


def check_jupyter(port: int, env_file: Path) -> Check:
    token = read_env_file(env_file).get("JUPYTER_TOKEN", "")
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/kernels")
    if token:
        request.add_header("Authorization", f"token {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (fixed local URL)
            kernels = json.load(response)
    except (OSError, ValueError) as exc:
        return False, f"Jupyter did not answer ({exc.__class__.__name__})"
    busy = [k for k in kernels if k.get("execution_state") == "busy"]
    if busy:
        return True, f"{len(busy)} of {len(kernels)} kernel(s) busy"
    return False, f"{len(kernels)} kernel(s), none busy"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def trial_pid(path: Path) -> int | None:
    """A trial file holds its process's PID: a plain number, or JSON with a "pid" key."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict):
        value = value.get("pid")
    return value if isinstance(value, int) and value > 0 else None


def papermill_processes(proc: Path) -> list[int]:
    found = []
    me = os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"papermill" in arg for arg in argv):
            found.append(int(entry.name))
    return found


HOLD_PREFIX = "hold-"
CLOCK_SLACK_S = 60  # a hold file a little in the future (a clock step) still counts; one far ahead does not


def check_trials(trials: Path, proc: Path) -> Check:
    found = trials.glob("*") if trials.is_dir() else []
    files = sorted(p for p in found if p.is_file() and not p.name.startswith(HOLD_PREFIX))
    live = [p.name for p in files if (pid := trial_pid(p)) is not None and pid_alive(pid)]
    papermill = papermill_processes(proc)
    if live or papermill:
        return True, f"{len(live)} running trial file(s), {len(papermill)} papermill process(es)"
    return False, f"no running trial ({len(files)} stale file(s)), no papermill process"


def check_holds(trials: Path, minutes: float, now: float) -> Check:
    holding, stale = [], 0
    for path in sorted(trials.glob(HOLD_PREFIX + "*")) if trials.is_dir() else []:
        try:
            age = now - path.stat().st_mtime
        except OSError:
            continue
        if -CLOCK_SLACK_S <= age <= minutes * 60:
            holding.append(path.name[len(HOLD_PREFIX) :])
        else:
            stale += 1
    if holding:
        return True, f"held by sweep(s) {', '.join(holding)}"
    return False, f"no sweep holds it ({stale} stale hold file(s))" if stale else "no sweep holds it"


def established_connections(port: int, proc: Path) -> int:
    count = 0
    for table in ("net/tcp", "net/tcp6"):
        try:
            lines = (proc / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def check_ssh(port: int, proc: Path) -> Check:
    sessions = established_connections(port, proc)
    if sessions:
        return True, f"{sessions} SSH connection(s)"
    return False, "no SSH session"


def boot_time(proc: Path) -> float:
    """When this host (or container) booted: the start of its PID 1, in epoch seconds."""
    btime = next(int(line.split()[1]) for line in (proc / "stat").read_text().splitlines() if line.startswith("btime "))
    try:
        stat = (proc / "1" / "stat").read_text()
        start_ticks = int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22, starttime
    except (OSError, ValueError, IndexError):
        return float(btime)  # the kernel's boot
    return btime + start_ticks / os.sysconf("SC_CLK_TCK")


def last_active(state: Path) -> float | None:
    try:
        return float(state.read_text().strip())
    except (OSError, ValueError):
        return None


def record_active(state: Path, now: float) -> None:
    state.parent.mkdir(parents=True, exist_ok=True)
    staging = state.with_name(f".{state.name}.tmp")
    staging.write_text(f"{now:.0f}\n")
    staging.replace(state)


def say(log: Path, message: str) -> None:
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {message}"
    print(message, flush=True)  # the journal, through the service's stdout
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as handle:
            handle.write(line + "\n")
    except OSError as exc:
        print(f"cannot write {log}: {exc}", file=sys.stderr)


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="lab-idle-check", description=__doc__.splitlines()[0])
    cli.add_argument("--minutes", type=float, required=True, help="idle minutes before power-off; 0 = never")
    cli.add_argument("--jupyter-port", type=int, default=8888)
    cli.add_argument("--jupyter-env", type=Path, default=Path("/etc/lab/jupyter.env"))
    cli.add_argument("--trials", type=Path, default=Path("/var/lib/lab/trials"))
    cli.add_argument("--hold-minutes", type=float, default=5, help="how long a sweep's hold file keeps the host on")
    cli.add_argument("--state", type=Path, default=Path("/var/lib/lab/last-active"))
    cli.add_argument("--log", type=Path, default=Path("/var/log/lab/idle.log"))
    cli.add_argument("--ssh-port", type=int, default=22)
    cli.add_argument("--proc", type=Path, default=Path("/proc"), help=argparse.SUPPRESS)  # tests: a fake /proc
    cli.add_argument("--dry-run", action="store_true", help="print the checks as JSON; change nothing")
    return cli


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.minutes <= 0 and not args.dry_run:
        return 0
    now = time.time()
    checks = {
        "gpu": check_gpu(),
        "jupyter": check_jupyter(args.jupyter_port, args.jupyter_env),
        "trials": check_trials(args.trials, args.proc),
        "sweeps": check_holds(args.trials, args.hold_minutes, now),
        "ssh": check_ssh(args.ssh_port, args.proc),
    }
    busy = [name for name, (is_busy, _) in checks.items() if is_busy]
    since = max(last_active(args.state) or 0.0, boot_time(args.proc))
    idle_for = 0.0 if busy else max(0.0, now - since)
    power_off = args.minutes > 0 and not busy and idle_for >= args.minutes * 60
    if args.dry_run:
        document = {
            "busy": busy,
            "checks": {name: {"busy": is_busy, "seen": seen} for name, (is_busy, seen) in checks.items()},
            "idle_for_s": round(idle_for, 1),
            "minutes": args.minutes,
            "would_power_off": power_off,
        }
        print(json.dumps(document))
        return 0
    if busy:
        record_active(args.state, now)
        return 0
    if not power_off:
        return 0
    seen = "; ".join(f"{name}: {what}" for name, (_, what) in checks.items())
    say(args.log, f"powering off: idle for {idle_for / 60:.1f} min (limit {args.minutes:g} min). Idle checks: {seen}")
    subprocess.run(["systemctl", "poweroff"], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
