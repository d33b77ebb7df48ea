"""What the tracker's budget guard (root) does as the tracker's service user, in a child process of its own:
writing in that user's folders (the budget's line for `lab sweep watch`, a line in a sweep's log) and stopping an
ssh lab's workers with that user's SSH key. Root never opens a path that user could have made a link, and never
reads that user's files (`toolkit.budget.tracker`).

`run_as(user, args)` runs `python -m toolkit.budget.tracker_user ARGS` as `user` (its own groups only, a clean
environment) and returns the lines it printed as JSON:

  publish --data D --state S --line L --reason R   the warning file <D>/sweeps/budget.json (removed when S is ok)
  note --data D --text T NAME...                   a line in each sweep's dispatch.log
  stop-workers --facts F                           the lab's services stopped on each worker of F (tracker.json)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from toolkit.errors import LabError


def run_as(
    user: str,
    args: list[str],
    timeout: float,
    say: Callable[[str], None] = lambda line: None,
    python: tuple[str, str | None] = (sys.executable, None),
) -> list[str]:
    """The lines the child hands back; what it said on the way (stderr) goes to `say`. `python`: the interpreter
    and its PYTHONPATH (None: the guard's own, whose venv holds the toolkit)."""
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise LabError(f"the tracker's service user {user!r} does not exist", hint="run `lab up` again") from None
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": entry.pw_dir, "LANG": "C.UTF-8"}
    if python[1]:
        env["PYTHONPATH"] = python[1]
    argv = [python[0], "-m", "toolkit.budget.tracker_user", *args]
    as_root = os.geteuid() == 0
    ran = subprocess.run(
        argv,
        user=entry.pw_uid if as_root else None,
        group=entry.pw_gid if as_root else None,
        extra_groups=[] if as_root else None,
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    said = ran.stderr.strip().splitlines()
    for line in said[:-1] if ran.returncode != 0 else said:
        say(line)
    if ran.returncode != 0:
        raise LabError(f"as {user}, `{args[0]}` failed: {said[-1] if said else f'exit {ran.returncode}'}")
    try:
        lines = json.loads(ran.stdout)
    except ValueError:
        raise LabError(f"as {user}, `{args[0]}` answered no JSON: {ran.stdout[-200:]!r}") from None
    return [str(line) for line in lines] if isinstance(lines, list) else []


def main(argv: list[str] | None = None) -> int:
    from toolkit.budget import guard

    parser = argparse.ArgumentParser(prog="python -m toolkit.budget.tracker_user")
    commands = parser.add_subparsers(dest="command", required=True)
    publish = commands.add_parser("publish")
    publish.add_argument("--data", type=Path, required=True)
    publish.add_argument("--state", required=True)
    publish.add_argument("--line", default="")
    publish.add_argument("--reason", default="")
    note = commands.add_parser("note")
    note.add_argument("--data", type=Path, required=True)
    note.add_argument("--text", required=True)
    note.add_argument("names", nargs="*")
    stop = commands.add_parser("stop-workers")
    stop.add_argument("--facts", type=Path, required=True)
    args = parser.parse_args(argv)
    done: list[str] = []
    try:
        if args.command == "publish":
            guard.publish(args.data, Shown(args.state, args.line, args.reason))  # type: ignore[arg-type]
        elif args.command == "note":
            guard.note_sweeps(args.data, args.names, args.text)
        else:
            from toolkit.budget import tracker
            from toolkit.labs import tracker_sweep

            done = tracker.stop_worker_services(tracker_sweep.facts(args.facts), said)
    except (OSError, LabError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(done))
    return 0


def said(text: str) -> None:
    print(text, file=sys.stderr, flush=True)  # stdout is the JSON the guard reads


class Shown:
    """A Verdict as `guard.publish` reads it: its state, its line and its reason."""

    def __init__(self, state: str, line: str, reason: str) -> None:
        self.state, self._line, self.reason = state, line, reason

    def line(self) -> str:
        return self._line


if __name__ == "__main__":
    sys.exit(main())
