"""The one way the toolkit runs external programs: an argument list, never a shell string."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import LabError

TAIL_LINES = 20


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class CommandFailed(LabError):
    """An external program exited non-zero; keeps the command, its exit code and its output's tail."""

    def __init__(self, result: Result) -> None:
        self.result = result
        output = (result.stderr.strip() or result.stdout.strip()).splitlines()
        self.tail = "\n".join(output[-TAIL_LINES:])
        last = output[-1].strip() if output else "no output"
        super().__init__(f"`{shlex.join(result.argv)}` failed with exit code {result.returncode}: {last}")


def run(
    argv: Sequence[str | Path],
    *,
    check: bool = True,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stdin: str | None = None,
) -> Result:
    """Run a program to completion and capture its output; failures become LabErrors."""
    args = tuple(str(a) for a in argv)
    try:
        completed = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=cwd,
            input=stdin,
            check=False,
        )
    except FileNotFoundError:
        raise LabError(
            f"{args[0]} is not installed or not on PATH", hint="`lab doctor` says how to install it"
        ) from None
    except subprocess.TimeoutExpired:
        raise LabError(f"`{shlex.join(args)}` did not finish within {timeout:g} s") from None
    result = Result(args, completed.returncode, completed.stdout, completed.stderr)
    if check and result.returncode != 0:
        raise CommandFailed(result)
    return result
