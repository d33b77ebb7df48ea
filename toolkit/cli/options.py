"""Options several commands share, typed once."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from toolkit.config.schema import TARGETS
from toolkit.config.stack import DEFAULT_STACK

# The choices of --target, made from the one list of targets.
TargetChoice = Enum("TargetChoice", {name: name for name in TARGETS}, type=str)  # type: ignore[misc]

Stack = Annotated[
    str,
    typer.Option(
        "--stack",
        "-s",
        envvar="LAB_STACK",
        metavar="STACK",
        help="Stack name (reads Pulumi.STACK.yaml) or the path of a stack file.",
    ),
]
STACK_DEFAULT = DEFAULT_STACK

Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]

Target = Annotated[
    Optional[TargetChoice],  # noqa: UP045 -- typer reads the annotation at run time on Python 3.10 too
    typer.Option(
        "--target", "-t", case_sensitive=False, help="Where the hosts come from (default: the stack's lab:target)."
    ),
]


def target_name(target: TargetChoice | None) -> str | None:
    return None if target is None else str(target.value)


Local = Annotated[bool, typer.Option("--local", help="Short for --target local: the lab on this machine.")]

Yes = Annotated[bool, typer.Option("--yes", "-y", help="Answer yes to confirmations (for cron and CI).")]
