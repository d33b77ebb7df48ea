"""Detached sweeps: a sweep handed to the machine that keeps the lab's tracker, and run there as a service.

`lab dispatch --detach` packs the notebook's folder (the notebook, the files beside it, the space file) and hands
it here: on the ssh and gcp targets to the tracker (always on, never preemptible; a systemd unit,
`lab-sweep@<name>.service`), on the local target to a process of its own. The laptop may then close. Every
sweep has a folder, `<root>/sweeps/<name>/`:

  bundle/        the notebook's folder as it was handed in (trials run this copy, not the user's files)
  space.yml      the search space
  sweep.json     what to run: the notebook's path in bundle/, study, trials, timeout, and where (`place`)
  run.lock       held (flock) by the process running the sweep; it holds that process's pid
  state.json     the running sweep as `lab sweep watch` shows it, rewritten every second
  dispatch.log   what the sweep did: trials started and ended, with why
  trials/        each trial's output while it runs (`lab sweep logs NAME --trial N`)
  out/           the executed notebooks (also kept in each trial's MLflow run)
  result.json    the summary once the sweep ends

The same module is the command every target runs where its sweeps live (`python -m toolkit.sweeps.service
receive|run|watch|logs|list --root R`): on this machine for the local target, over SSH as the tracker's user on
the others. A sweep's name is its study's name, so the same `lab dispatch` resumes it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import re
import shutil
import signal
import socket
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolkit.errors import LabError
from toolkit.sweeps import workdir

SWEEPS = "sweeps"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
BUNDLE_LIMIT_BYTES = workdir.SENT_LIMIT_BYTES
STATE_EVERY_S = 1.0
FINAL = ("finished", "stopped", "failed")
STOP_TIMEOUT_S = 90  # a sweep told to stop records its running trials as interrupted in this time (takes seconds)
TAIL_LINES = 40


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise LabError(
            f"{name!r} cannot name a sweep",
            hint="use letters, digits, '.', '_' and '-' (at most 64, starting with a letter or digit): --study NAME",
        )
    return name


def folder_of(root: Path, name: str) -> Path:
    return root / SWEEPS / check_name(name)


# -- handing a sweep over --------------------------------------------------------------------------------------
def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), mode
    tar.addfile(info, io.BytesIO(data))


def measure(notebook: Path, space_file: Path, limit: int = BUNDLE_LIMIT_BYTES) -> list[Path]:
    """The files a sweep takes from the notebook's folder (`toolkit.sweeps.workdir.sent`), with its space file."""
    return workdir.sent(notebook.parent, limit, beside=space_file.stat().st_size)


def pack(
    notebook: Path,
    space_file: Path,
    doc: dict[str, Any],
    limit: int = BUNDLE_LIMIT_BYTES,
    extra: dict[str, str] | None = None,
) -> bytes:
    """The sweep as one gzipped tar: the notebook's folder (`measure`) as bundle/, the space file as space.yml, and
    `doc` as sweep.json with the notebook's provenance (its path here, git commit, path in the repository, dirty);
    `extra` (name -> text: the stack's requirements) goes into bundle/ beside the notebook."""
    from toolkit.sweeps import provenance

    base = notebook.parent
    doc = {**doc, "provenance": provenance.of(notebook).to_json()}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in measure(notebook, space_file, limit):
            tar.add(path, arcname=f"bundle/{path.relative_to(base).as_posix()}", recursive=False)
        tar.add(space_file, arcname="space.yml", recursive=False)
        for name, text in (extra or {}).items():
            _add_bytes(tar, f"bundle/{name}", text.encode(), 0o644)
        _add_bytes(tar, "sweep.json", json.dumps(doc, indent=2).encode(), 0o600)
    return buffer.getvalue()


def receive(root: Path, name: str, data: bytes) -> Path:
    """Unpack a packed sweep into its folder (replacing an earlier bundle of the same name; its logs, outputs and
    study stay, so the sweep resumes); refused while that sweep runs."""
    folder = folder_of(root, name)
    if running(folder) is not None:
        raise LabError(f"sweep {name!r} is running", hint=f"watch it (`lab sweep watch {name}`) or stop it first")
    incoming = folder.parent / f".{name}.incoming"
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir(parents=True, mode=0o750)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
        for member in members:
            parts = Path(member.name).parts
            if (
                not (member.isfile() or member.isdir())
                or member.name.startswith("/")
                or ".." in parts
                or not (member.name in ("sweep.json", "space.yml") or parts[0] == "bundle")
            ):
                raise LabError(f"a sweep's bundle may not hold {member.name!r}")
            member.mode = 0o750 if member.isdir() else 0o640
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 (a tracker on Debian 12 has 3.11.2)
            tar.extractall(incoming, members=members, filter="data")
        else:
            tar.extractall(incoming, members=members)  # noqa: S202 -- every member checked above
    doc = json.loads((incoming / "sweep.json").read_text())
    if doc.get("study") != name or not (incoming / "bundle" / str(doc.get("notebook", ""))).is_file():
        raise LabError(f"the bundle of sweep {name!r} does not hold its notebook or names another study")
    folder.mkdir(parents=True, exist_ok=True, mode=0o750)
    for part in ("bundle", "space.yml", "sweep.json", "result.json", "state.json"):
        target = folder / part
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    for part in ("bundle", "space.yml", "sweep.json"):
        (incoming / part).rename(folder / part)
    shutil.rmtree(incoming, ignore_errors=True)
    write_state(folder, {"name": name, "study": name, "status": "submitted", "updated": time.time()})
    return folder


# -- the running sweep's lock, state and log ------------------------------------------------------------------
def run_lock(folder: Path) -> contextlib.AbstractContextManager[None]:
    """Held by the process that runs the sweep (for `running` and `lab sweep stop`)."""
    from toolkit.sweeps import dispatch

    refusal = LabError(f"sweep {folder.name!r} is already running", hint="`lab sweep watch` it")
    return dispatch.pid_lock(folder / "run.lock", folder.name, refusal)


def running(folder: Path) -> int | None:
    """The pid of the process running the sweep in `folder` (-1 while it starts), None when none does."""
    from toolkit.sweeps import dispatch

    holder = dispatch.held(folder / "run.lock")
    return None if holder is None else int(holder["pid"])


def write_state(folder: Path, state: dict[str, Any]) -> None:
    temporary = folder / ".state.json.tmp"
    temporary.write_text(json.dumps(state, default=str))
    temporary.replace(folder / "state.json")


def _state_file(folder: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return state if isinstance(state, dict) else None


def read_state(folder: Path) -> dict[str, Any] | None:
    state = _state_file(folder)
    if state is None:
        return None
    if state.get("status") not in FINAL and state.get("status") != "submitted" and running(folder) is None:
        # The process writes its last state before it lets go of the lock: read again now that it has, or a sweep
        # that ended between the two reads above would look killed.
        state = _state_file(folder) or state
        if state.get("status") not in FINAL and state.get("status") != "submitted":
            state["status"] = "failed"  # the process went away without saying how it ended (killed, machine reboot)
            state.setdefault("error", "the sweep's process ended without a word: see `lab sweep logs`")
    with contextlib.suppress(OSError, json.JSONDecodeError):  # the budget guard's warning (toolkit.budget.guard)
        state["budget"] = json.loads((folder.parent / "budget.json").read_text()).get("line")
    return state


def log_line(folder: Path, text: str) -> None:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    with (folder / "dispatch.log").open("a") as handle:
        handle.write(f"{stamp} {text}\n")


# -- running it -------------------------------------------------------------------------------------------------
def snapshot(sweep: Any, started: float, *, name: str, status: str, extra: dict[str, Any] | None = None) -> dict:
    """The running sweep as `lab sweep watch` and `lab dispatch`'s live table show it."""
    progress = sweep.progress
    now = time.monotonic()
    busy = {r.slot: r for r in progress.results if r.state == "RUNNING"} if progress else {}
    slots = []
    for slot in sweep.slots:
        result = busy.get(slot.name)
        entry: dict[str, Any] = {"name": slot.name, "state": "lost" if slot.name in sweep.lost_slots else "idle"}
        if sweep.notes.get(slot.name):
            entry["note"] = sweep.notes[slot.name]
        if result is not None:
            entry.update(
                state="running", trial=result.number, elapsed_s=round(now - result.started, 1), params=result.params
            )
        slots.append(entry)
    return {
        "name": name,
        "study": sweep.spec.study,
        "status": status,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "updated": time.time(),
        "elapsed_s": round(now - started, 1),
        "metric": sweep.spec.space.metric,
        "direction": sweep.spec.space.direction,
        "planned": progress.planned if progress else 0,
        "earlier": progress.already if progress else 0,
        "completed": progress.count("COMPLETE") if progress else 0,
        "failed": progress.count("FAIL") if progress else 0,
        "interrupted": progress.count("INTERRUPTED") if progress else 0,
        "best": progress.best if progress else None,
        "slots": slots,
        "workers": dict(sweep.keeper.view) if sweep.keeper is not None else {},
        **(extra or {}),
    }


class Events:
    """Writes each trial's start and end to the sweep's log, once, as the live view changes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: dict[int, tuple[str, int]] = {}
        self.lost: set[str] = set()

    def __call__(self, sweep: Any) -> None:
        lost = set(sweep.lost_slots)
        for name in sorted(lost - self.lost):
            log_line(self.folder, f"slot {name} lost: its host does not answer (its trial runs again elsewhere)")
        for name in sorted(self.lost - lost):
            log_line(self.folder, f"slot {name} is back: its host answers again")
        self.lost = lost
        progress = sweep.progress
        for result in list(progress.results if progress else []):
            key = (result.state, result.attempts)
            if self.seen.get(result.number) == key:
                continue
            self.seen[result.number] = key
            if result.state == "RUNNING":
                again = f" (attempt {result.attempts}, again because {result.again or 'an attempt ended early'})"
                if result.attempts <= 1:
                    resumed = result.resume_run_id
                    again = f" (resumes run {resumed}, interrupted earlier)" if resumed else ""
                log_line(self.folder, f"trial {result.number} started on {result.slot}{again}: {result.params}")
            elif result.state == "COMPLETE":
                log_line(self.folder, f"trial {result.number} complete: {sweep.spec.space.metric} = {result.value}")
            else:
                first = (result.error or "").strip().splitlines()
                log_line(self.folder, f"trial {result.number} {result.state.lower()}: {first[-1] if first else ''}")


def run(root: Path, name: str, place: Callable[[dict[str, Any], contextlib.ExitStack], Any] | None = None) -> int:
    """Run the sweep in its folder to its end (or until SIGINT/SIGTERM: running trials interrupted and queued)."""
    from toolkit.sweeps import dispatch as engine

    folder = folder_of(root, name)
    doc = json.loads((folder / "sweep.json").read_text())
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a stop is Ctrl-C: trials recorded, then out
    # ... and Ctrl-C is a stop even where it came in ignored: a sweep handed over from a shell's background job or a
    # cron job inherits SIGINT ignored, and `lab sweep stop` and `lab down` stop a sweep with SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    status, error = "failed", ""
    with run_lock(folder), contextlib.ExitStack() as exits:
        log_line(folder, f"sweep {name} starting (pid {os.getpid()} on {socket.gethostname()})")
        write_state(
            folder, {"name": name, "study": name, "status": "starting", "pid": os.getpid(), "updated": time.time()}
        )
        sweep = None
        try:
            where = (place or place_of)({**doc["place"], "root": str(root)}, exits)
            spec = sweep_spec(folder, doc, where)
            with engine.study_lock(spec.storage_path, name):
                sweep = engine.Sweep(spec, where.slots)
                sweep.reviver = where.reviver
                progress = sweep.open()
                log_line(
                    folder, f"{progress.planned} trials to run on {len(where.slots)} slots, {progress.already} earlier"
                )
                events, last = Events(folder), 0.0

                def changed() -> None:
                    nonlocal last
                    events(sweep)
                    if time.monotonic() - last >= STATE_EVERY_S:
                        last = time.monotonic()
                        write_state(folder, snapshot(sweep, started, name=name, status="running"))

                changed()
                try:
                    sweep.run(on_change=changed)
                    status = "finished"
                except KeyboardInterrupt:
                    status = "stopped"
                finally:
                    sweep.close()
                events(sweep)
                if sweep.exhausted:
                    log_line(folder, sweep.exhausted)
                result = engine.summary(sweep, time.monotonic() - started)
                (folder / "result.json").write_text(json.dumps(result, default=str, indent=1))
        except KeyboardInterrupt:
            status = "stopped"
        except LabError as exc:
            error = exc.one_line()
        except Exception as exc:  # the service's log must say why it ended, whatever it was
            error = f"{type(exc).__name__}: {exc}"
        final = snapshot(sweep, started, name=name, status=status) if sweep and sweep.progress else {}
        final.update(name=name, study=name, status=status, updated=time.time(), pid=os.getpid())
        if error:
            final["error"] = error
        write_state(folder, final)
        log_line(folder, f"sweep {name} {status}" + (f": {error}" if error else ""))
    return 0 if status != "failed" else 1


def sweep_spec(folder: Path, doc: dict[str, Any], where: Any) -> Any:
    """The sweep a received bundle describes (its sweep.json `doc`), run at `where` (a SweepPlace)."""
    from toolkit.sweeps import dispatch as engine
    from toolkit.sweeps import prepare, space
    from toolkit.sweeps.provenance import Provenance

    searched = space.load(folder / "space.yml")
    return engine.SweepSpec(
        notebook=folder / "bundle" / doc["notebook"],
        space=searched,
        study=folder.name,
        trials=int(doc["trials"]),
        timeout=doc.get("timeout"),
        output_pattern=str(folder / "out" / "{notebook}-{trial}-{run_id}.ipynb"),
        tracking_uri=where.tracking_uri,
        storage_path=where.storage_path,
        grpc_port=where.grpc_port,
        logs=folder / "trials",
        steps=prepare.steps_for(searched, folder / "bundle", where, folder / "bundle" / doc["notebook"]),
        provenance=Provenance.from_json(doc.get("provenance")),  # the user's notebook, not this copy of it
    )


def place_of(place: dict[str, Any], exits: contextlib.ExitStack) -> Any:
    """The slots and tracker of a detached sweep on this machine (the local target), from its `place`; the tracker's
    are `toolkit.labs.tracker_sweep`'s."""
    from toolkit.sweeps import slots
    from toolkit.sweeps.place import SweepPlace

    if place["kind"] == "local":
        slot_list = slots.local_slots(int(place["parallel"]), place.get("gpus"), int(place["runs_per_gpu"]))
        price = place.get("usd_per_hour")
        slots.price_slots(slot_list, lambda _: price, lambda _: "local")
        data_root = place.get("data_root")
        return SweepPlace(
            slot_list,
            place["tracking_uri"],
            Path(place["storage"]),
            data_store=place.get("data_store"),
            data_root=Path(data_root) if data_root else None,
        )
    raise LabError(f"a sweep cannot run on {place['kind']!r}")


# -- what the command line asks of it --------------------------------------------------------------------------
def listing(root: Path) -> list[dict[str, Any]]:
    found = []
    base = root / SWEEPS
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and NAME.fullmatch(p.name)) if base.is_dir() else []:
        state = read_state(folder) or {"name": folder.name, "status": "unknown"}
        found.append({k: state.get(k) for k in ("name", "status", "completed", "failed", "planned", "best", "updated")})
    return found


def watch(root: Path, name: str, once: bool, every: float = 0.5) -> int:
    """Print the sweep's state as one JSON line whenever it changes, until it ends (or once)."""
    folder = folder_of(root, name)
    if not folder.is_dir():
        known = ", ".join(s["name"] for s in listing(root)) or "none"
        raise LabError(f"no sweep named {name!r}", hint=f"sweeps: {known}")
    last = None
    while True:
        state = read_state(folder)
        text = json.dumps(state, default=str)
        if state is not None and text != last:
            print(text, flush=True)
            last = text
        if once or (state is not None and state.get("status") in FINAL):
            return 0
        time.sleep(every)


def logs(root: Path, name: str, trial: int | None, follow: bool, lines: int = TAIL_LINES) -> int:
    """The sweep's log (or one trial's output): its last lines, then, with follow, what is written next until the
    sweep (or the trial) ends."""
    folder = folder_of(root, name)
    path = folder / "dispatch.log" if trial is None else folder / "trials" / f"trial-{trial}.log"
    if not path.exists():
        what = f"trial {trial} of sweep {name!r} has no output yet" if trial is not None else f"no sweep {name!r}"
        raise LabError(what, hint=f"`lab sweep watch {name}` shows which trials run")
    with path.open("rb") as handle:
        text = handle.read()
        position = handle.tell()
    tail = text.decode(errors="replace").splitlines()[-lines:]
    for line in tail:
        print(line, flush=True)
    while follow:
        time.sleep(0.3)
        with path.open("rb") as handle:
            handle.seek(position)
            chunk = handle.read()
            position = handle.tell()
        if chunk:
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
        elif _over(folder, trial):
            return 0
    return 0


def _over(folder: Path, trial: int | None) -> bool:
    state = read_state(folder) or {}
    if state.get("status") in FINAL:
        return True
    if trial is None:
        return False
    return not any(s.get("trial") == trial for s in state.get("slots", []))


def stop(root: Path, name: str, say: Callable[[str], None], timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop the sweep's process as Ctrl-C does and wait for it to record its trials; False when it was not running."""
    from toolkit.sweeps import dispatch

    folder = folder_of(root, name)
    pid = running(folder)
    if pid is None:
        return False
    say(f"stopping sweep {name!r} (pid {pid}) as Ctrl-C does")
    dispatch.interrupt(folder / "run.lock", f"sweep {name!r}", timeout_s, "kill -INT {pid}")
    return True


def start_process(root: Path, name: str, timeout_s: float = 60) -> int:
    """Run the sweep as a process of its own on this machine (the local target), detached from this terminal;
    its pid, once it has taken the sweep's lock."""
    import subprocess

    folder = folder_of(root, name)
    with (folder / "dispatch.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "toolkit.sweeps.service", "run", "--root", str(root), "--name", name],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = read_state(folder) or {}
        if state.get("status") not in (None, "submitted"):
            return process.pid
        if process.poll() is not None:
            break
        time.sleep(0.1)
    tail = (folder / "dispatch.log").read_text(errors="replace").strip().splitlines()[-1:]
    raise LabError(f"sweep {name!r} did not start: {tail[0] if tail else 'no output'}", hint=f"`lab sweep logs {name}`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit.sweeps.service", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("receive", "run", "watch", "logs", "list", "stop"))
    parser.add_argument("--root", "--data", dest="root", type=Path, required=True, help="the folder holding sweeps/")
    parser.add_argument("--name", default="")
    parser.add_argument("--trial", type=int)
    parser.add_argument("--follow", action="store_true")
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.action == "receive":
            receive(args.root, args.name, sys.stdin.buffer.read())
            return 0
        if args.action == "run":
            return run(args.root, args.name)
        if args.action == "watch":
            return watch(args.root, args.name, args.once)
        if args.action == "logs":
            return logs(args.root, args.name, args.trial, args.follow)
        if args.action == "stop":
            return 0 if stop(args.root, args.name, lambda line: print(line, file=sys.stderr)) else 3
        print(json.dumps(listing(args.root), default=str))
        return 0
    except LabError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, BrokenPipeError):
        return 130


if __name__ == "__main__":
    sys.exit(main())
