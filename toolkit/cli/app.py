"""The `lab` command line: composes the command modules; nothing else lives here."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from toolkit import __version__
from toolkit.cli import failures
from toolkit.cli.commands import (
    backup,
    config_show,
    config_validate,
    cost,
    dispatch,
    doctor,
    down,
    init,
    restore,
    schedule,
    ssh,
    status,
    sweep_show,
    sweeps,
    tunnel,
    up,
)


def _print_version(value: bool) -> None:
    if value:
        print(f"lab {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="lab",
    help="A personal GPU research lab: spot GPU workers, a tracker that never loses history, "
    "notebook sweeps. Up and down with one command.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("init")(init.init)
config_app = typer.Typer(help="Show and check a stack's settings.", no_args_is_help=True)
config_app.command("show")(config_show.show)
config_app.command("validate")(config_validate.validate)
app.add_typer(config_app, name="config")
app.command("up")(up.up)
app.command("status")(status.status)
app.command("backup")(backup.backup)
app.command("restore")(restore.restore)
app.command("down")(down.down)
app.command("tunnel")(tunnel.tunnel)
app.command("ssh")(ssh.ssh)
app.command("dispatch")(dispatch.dispatch)
app.command("sweeps")(sweeps.sweeps)
sweep_app = typer.Typer(help="Look at one sweep.", no_args_is_help=True)
sweep_app.command("show")(sweep_show.show)
app.add_typer(sweep_app, name="sweep")
app.command("cost")(cost.cost)
schedule_app = typer.Typer(
    help="Schedule `lab down --yes` for a stack with cron (meant for the gcp target), list and remove it.",
    no_args_is_help=True,
)
schedule_app.command("down")(schedule.down)
schedule_app.command("list")(schedule.list_)
schedule_app.command("remove")(schedule.remove)
app.add_typer(schedule_app, name="schedule")
app.command("doctor")(doctor.doctor)


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks (also LAB_DEBUG=1).")] = False,
) -> None:
    """Options for every command."""


def main(argv: list[str] | None = None) -> int:
    """The console script: run one command and return its exit code (see toolkit.errors)."""
    args = sys.argv[1:] if argv is None else list(argv)

    def run() -> int | None:
        result = app(args=args, prog_name="lab", standalone_mode=False)
        return result if isinstance(result, int) else None

    return failures.handle(run, args)


if __name__ == "__main__":
    sys.exit(main())
