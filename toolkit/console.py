"""Rich consoles for human output (stdout) and diagnostics (stderr), made on first use, and the `Ui` a lab
talks through."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


@cache
def out() -> Console:
    from rich.console import Console

    return Console(soft_wrap=True)


@cache
def err() -> Console:
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


@dataclass(frozen=True)
class Ui:
    """How a lab talks to the person (or script) running a command, whatever the target.

    `say`: diagnostics, on stderr. `show`: human output while the lab works (stdout; stderr under --json,
    where stdout is the one JSON document). `live`: a table redrawn as it changes (nothing under --json).
    `confirm`: a yes/no question; --yes answers it, and without a terminal there is no one to ask."""

    json: bool = False
    yes: bool = False

    def say(self, text: str) -> None:
        err().print(text)

    def show(self, text: str, **options: Any) -> None:
        (err() if self.json else out()).print(text, **options)

    @contextmanager
    def live(self) -> Iterator[Callable[[Any], None]]:
        if self.json:
            yield lambda renderable: None
            return
        from rich.live import Live

        with Live(console=err(), refresh_per_second=4, transient=False) as shown:
            yield shown.update

    def confirm(self, question: str) -> bool:
        import sys

        from toolkit.errors import LabError

        if self.yes:
            return True
        if not sys.stdin.isatty():
            raise LabError(f"{question} needs a yes, and there is no terminal to ask", hint="pass --yes")
        import typer

        return typer.confirm(question, default=False)


def age(seconds: float) -> str:
    """A duration as people read it: 45 s, 12 min, 5 h, 3 days."""
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"
