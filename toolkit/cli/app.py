"""The `lab` command line: composes the command modules, importing only the one that runs.

Each command is one module under `toolkit/cli/commands/` (`COMMANDS` names it as `module:function`). A run of
`lab up` imports `commands/up.py` and no other command; `lab --help` imports none, listing each command with
the first line of its docstring read from the module's source. So start-up does not grow with the number of
commands (`benchmarks/cli_startup.py` measures it). Nothing else lives here.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit import __version__
from toolkit.cli import failures

HELP = (
    "A personal GPU research lab: spot GPU workers, a tracker that never loses history, notebook sweeps. "
    "Up and down with one command."
)
CONTEXT = {"help_option_names": ["-h", "--help"]}
COMMANDS_DIR = Path(__file__).resolve().parent / "commands"

# name -> "module:function" under toolkit.cli.commands, or a group: (its help, {name: "module:function"}).
COMMANDS: dict[str, str | tuple[str, dict[str, str]]] = {
    "init": "init:init",
    "config": (
        "Show and check a stack's settings.",
        {"show": "config_show:show", "validate": "config_validate:validate"},
    ),
    "up": "up:up",
    "status": "status:status",
    "backup": "backup:backup",
    "restore": "restore:restore",
    "down": "down:down",
    "tunnel": "tunnel:tunnel",
    "ssh": "ssh:ssh",
    "dispatch": "dispatch:dispatch",
    "sweeps": "sweeps:sweeps",
    "sweep": (
        "Look at one sweep: watch it, read its logs, stop it, show its best trials.",
        {"watch": "sweep_watch:watch", "logs": "sweep_logs:logs", "stop": "sweep_stop:stop", "show": "sweep_show:show"},
    ),
    "data": (
        "Keep datasets in the lab's store (the bucket, else the tracker or LAB_HOME): push, list, remove.",
        {"push": "data_push:push", "ls": "data_ls:ls", "rm": "data_rm:rm"},
    ),
    "cost": "cost:cost",
    "schedule": (
        "Schedule `lab down --yes` for a stack with cron (meant for the gcp target), list and remove it.",
        {"down": "schedule:down", "list": "schedule:list_", "remove": "schedule:remove"},
    ),
    "doctor": "doctor:doctor",
}


def _typer(**options: Any) -> typer.Typer:
    return typer.Typer(
        add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None, context_settings=CONTEXT, **options
    )


def load(target: str) -> Callable[..., Any]:
    """A command's function, its module imported now."""
    module, function = target.split(":")
    return getattr(importlib.import_module(f"toolkit.cli.commands.{module}"), function)


@cache
def docstring(target: str) -> str:
    """A command function's docstring, read from its module's source without importing it (the first
    triple-quoted string after `def function(...) -> ...:`; a test checks it against the imported function's)."""
    module, function = target.split(":")
    source = (COMMANDS_DIR / f"{module}.py").read_text(encoding="utf-8")
    found = re.search(rf'^def {function}\(.*?\)(?: -> [^\n]+)?:\n\s+"""(.*?)"""', source, re.S | re.M)
    return inspect.cleandoc(found.group(1)) if found else ""


def _listed() -> None:
    """Stands in for a command that is only listed (another command runs, or the help is shown)."""


def _print_version(value: bool) -> None:
    if value:
        print(f"lab {__version__}")
        raise typer.Exit()


def build(running: str | None = None, *, listing: bool = True) -> typer.Typer:
    """The command line with the command `running` (and its group's) loaded; every other command is only
    listed, with its help when `listing` (the help is shown). `build(ALL)` loads every command (the docs tests)."""
    app = _typer(name="lab", help=HELP, no_args_is_help=True)

    def add(to: typer.Typer, name: str, target: str, load_it: bool) -> None:
        if load_it:
            to.command(name)(load(target))
        else:
            to.command(name, help=docstring(target) if listing else None, add_help_option=False)(_listed)

    for name, entry in COMMANDS.items():
        load_it = running in (name, ALL)
        if isinstance(entry, str):
            add(app, name, entry, load_it)
            continue
        group_help, members = entry
        group = _typer(help=group_help, no_args_is_help=True)
        for member, target in members.items():
            add(group, member, target, load_it)
        app.add_typer(group, name=name)

    @app.callback()
    def root(
        version: Annotated[
            bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
        ] = False,
        debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks (also LAB_DEBUG=1).")] = False,
    ) -> None:
        """Options for every command."""

    return app


ALL = "*"


def command_of(args: list[str]) -> str | None:
    """The command an argument list runs: its first word that is not one of the root's options."""
    for arg in args:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg
    return None


def main(argv: list[str] | None = None) -> int:
    """The console script: run one command and return its exit code (see toolkit.errors)."""
    args = sys.argv[1:] if argv is None else list(argv)
    running = command_of(args)
    app = build(running, listing=running is None and "--version" not in args)

    def run() -> int | None:
        result = app(args=args, prog_name="lab", standalone_mode=False)
        return result if isinstance(result, int) else None

    return failures.handle(run, args)


if __name__ == "__main__":
    sys.exit(main())
