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


# Without a terminal (a pipe, a CI log) rich takes 80 columns and cuts a live table's title there; a log is as wide as
# its lines, so the consoles are this wide there unless COLUMNS says otherwise.
NO_TERMINAL_WIDTH = 1000


def _console(stderr: bool) -> Console:
    import os
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    wide = not os.environ.get("COLUMNS") and not (hasattr(stream, "isatty") and stream.isatty())
    return Console(stderr=stderr, soft_wrap=True, width=NO_TERMINAL_WIDTH if wide else None)


@cache
def out() -> Console:
    return _console(stderr=False)


@cache
def err() -> Console:
    return _console(stderr=True)


@contextmanager
def live(renderable: Any = None, console: Console | None = None, **options: Any) -> Iterator[Any]:
    """A rich Live view that ends its last line also without a terminal (rich leaves it open there, and the next
    line, an error say, would follow the table's border)."""
    from rich.live import Live

    shown_on = console or err()
    try:
        with Live(renderable, console=shown_on, **options) as view:
            yield view
    finally:
        if not shown_on.is_terminal:
            shown_on.line()


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
        with live(refresh_per_second=4, transient=False) as shown:
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
