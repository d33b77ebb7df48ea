"""`lab schedule down|list|remove`: a scheduled `lab down --yes` in the user's crontab."""

from __future__ import annotations

import json
import shlex
import stat
from typing import Annotated

import typer

from toolkit.cli import options
from toolkit.console import err, out
from toolkit.errors import LabError


def down(
    at: Annotated[
        str,
        typer.Option(
            "--at",
            metavar="CRON",
            help='When: 5 cron fields in this machine\'s local time ("0 2 * * *" is 02:00 every day, '
            '"0 20 * * 1-5" 20:00 on weekdays) or @daily, @hourly, @weekly, @monthly, @yearly.',
        ),
    ],
    stack_name: options.Stack = options.STACK_DEFAULT,
    print_only: Annotated[
        bool,
        typer.Option(
            "--print", help="Show the crontab entry and a GitHub Actions workflow that does the same; install nothing."
        ),
    ] = False,
) -> None:
    """Schedule `lab down --yes` for a stack in your crontab (meant for the gcp target: the GPUs stop at
    night even when you forget). Its output goes to LAB_HOME/stacks/STACK/schedule-down.log. A stack that
    already has a scheduled teardown gets the new one in its place."""
    from toolkit.cli import crontab as schedule
    from toolkit.config import paths

    plan = schedule.plan_down(stack_name, at)
    entry = plan.entry
    if print_only:
        say = out().print
        how = f"lab schedule down --at '{entry.when}' --stack {shlex.quote(plan.stack_arg)}"
        say(
            f"# the crontab entry (`{how}` installs it):",
            markup=False,
            highlight=False,
        )
        for line in entry.lines():
            say(line, markup=False, highlight=False)
        if plan.needs_passphrase and plan.passphrase_file is None:
            say(
                f"# NOTE: set {schedule.PASSPHRASE_FILE_ENV} (a 0600 file with the passphrase) before installing it:"
                " the passphrase itself is never written into a crontab.",
                markup=False,
                highlight=False,
            )
        say("", markup=False)
        say(schedule.workflow(plan), markup=False, highlight=False, end="")
        return
    if plan.needs_passphrase and plan.passphrase_file is None:
        raise LabError(
            f"the scheduled `lab down` would have no passphrase for stack {entry.stack}'s secrets "
            f"(it is never written into a crontab)",
            hint=f"put it in a 0600 file, export {schedule.PASSPHRASE_FILE_ENV}=that file, and run this again",
        )
    if plan.passphrase_file is not None and plan.passphrase_file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        err().print(
            f"warning: {plan.passphrase_file} can be read by others: chmod 600 {plan.passphrase_file}", highlight=False
        )
    crontab = schedule.Crontab.here()
    paths.stack_home(entry.stack).mkdir(parents=True, exist_ok=True)  # where its log goes
    replaced = schedule.install(crontab, entry)
    if replaced is not None:
        out().print(
            f"replaced the scheduled teardown of stack {entry.stack} (it was at '{replaced.when}')",
            markup=False,
            highlight=False,
        )
    runs = f"lab down --stack {shlex.quote(plan.stack_arg)} --yes"
    out().print(
        f"scheduled `{runs}` at '{entry.when}' (local time) in {crontab.name}",
        markup=False,
        highlight=False,
    )
    out().print(f"its output goes to {entry.log}", markup=False, highlight=False)


def list_(as_json: options.Json = False) -> None:
    """The scheduled teardowns in your crontab: stack, when, command and log file."""
    from toolkit.cli import crontab as schedule

    found = schedule.entries(schedule.Crontab.here())
    if as_json:
        out().print_json(json.dumps([e.as_json() for e in found]))
        return
    if not found:
        out().print("no scheduled teardown")
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="scheduled teardowns", title_justify="left")
    table.add_column("stack", style="bold")
    table.add_column("when")
    table.add_column("runs", overflow="fold")
    table.add_column("log", overflow="fold")
    for e in found:
        table.add_row(escape(e.stack), escape(e.when), escape(e.runs), escape(e.log or "-"))
    out().print(table)
    out().print("(`lab schedule list --json` shows each entry's whole command, with its environment)")


def remove(
    stack_name: options.Stack = options.STACK_DEFAULT,
    every: Annotated[bool, typer.Option("--all", help="Remove the scheduled teardown of every stack.")] = False,
) -> None:
    """Remove a stack's scheduled teardown from your crontab (nothing there: exit 0); other lines stay."""
    from toolkit.cli import crontab as schedule
    from toolkit.config import stack

    name = None if every else stack.stack_path(stack_name)[0]
    removed = schedule.remove(schedule.Crontab.here(), name)
    if not removed:
        whose = "" if name is None else f" of stack {name}"
        out().print(f"nothing to remove: no scheduled teardown{whose}", markup=False, highlight=False)
        return
    for entry in removed:
        out().print(
            f"removed the scheduled teardown of stack {entry.stack} (at '{entry.when}')", markup=False, highlight=False
        )
