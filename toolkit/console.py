"""Rich consoles for human output (stdout) and diagnostics (stderr), made on first use."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

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
