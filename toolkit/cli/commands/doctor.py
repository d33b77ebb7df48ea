"""`lab doctor`: is this machine ready for a target, and if not, the commands that make it so."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from toolkit.cli import options
from toolkit.config import schema, stack
from toolkit.console import err, out
from toolkit.errors import LabError


def _target_key_project(stack_name: str, target: str | None) -> tuple[str, str, str | None, schema.Settings | None]:
    """The target to check, the SSH key to look for, the GCP project to ask and the stack's settings (for the
    quotas its VMs need): from the stack file when there is one."""
    from toolkit.labs import DEFAULT_TARGET

    default_key = schema.KEYS_BY_NAME["lab:sshPublicKeyPath"].default
    try:
        _, resolution = stack.load(stack_name, target=target)
    except LabError:
        # No readable stack file: the embedded default.
        return target or DEFAULT_TARGET, default_key, None, None
    values = resolution.values
    chosen = target or values.get("lab:target") or DEFAULT_TARGET
    key_path = values.get("lab:sshPublicKeyPath")
    project = values.get("gcp:project")
    return (
        chosen,
        key_path if isinstance(key_path, str) else default_key,
        project if isinstance(project, str) and project else None,
        resolution.settings if not resolution.problems else None,
    )


def doctor(
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
    as_json: options.Json = False,
    install_pulumi: Annotated[
        bool,
        typer.Option(
            "--install-pulumi",
            help="Install the Pulumi CLI (the version of the pulumi SDK here) into LAB_HOME/pulumi-cli, then stop.",
        ),
    ] = False,
) -> None:
    """Check the prerequisites of a target (Pulumi CLI, GCP credentials, SSH key, Ansible, disk; for gcp also
    the project's APIs, the quotas its VMs need and the organization policies that would stop the lab)."""
    if install_pulumi:
        _install_pulumi()
        return
    chosen, key_path, project, settings = _target_key_project(stack_name, options.target_name(target))
    from toolkit import labs

    checks = labs.lab_class(chosen).prerequisites(key_path, project, settings)
    missing = [c for c in checks if not c.ok and c.required]
    if as_json:
        document = {"target": chosen, "ok": not missing, "checks": [c.__dict__ for c in checks]}
        out().print_json(json.dumps(document))
    else:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=f"prerequisites of the {chosen} target", title_justify="left")
        table.add_column("check", style="bold")
        table.add_column("status")
        table.add_column("found", overflow="fold")
        for check in checks:
            status = (
                "[green]ok[/green]"
                if check.ok
                else ("[red]missing[/red]" if check.required else "[yellow]optional[/yellow]")
            )
            table.add_row(escape(check.name), status, escape(check.detail))
        out().print(table)
        fixes = [c for c in checks if not c.ok and c.fix]
        if fixes:
            out().print("\nTo fix:")
            for check in fixes:
                out().print(f"  {escape(check.name)}: [bold]{escape(check.fix or '')}[/bold]", highlight=False)
    if missing:
        names = ", ".join(c.name for c in missing)
        raise LabError(f"the {chosen} target is missing: {names}", hint="run the fixes above")
    if not as_json:
        out().print(f"\n[green]ready[/green] for the {chosen} target")


def _install_pulumi() -> None:
    """`--install-pulumi`: install the CLI, or say where the usable one already is."""
    import os

    from toolkit.gcp.pulumi_install import install

    installed = install(say=lambda line: err().print(line, highlight=False))
    if not installed.fresh:
        out().print(f"the Pulumi CLI v{installed.version} is already installed at {installed.path}", highlight=False)
        return
    out().print(f"[green]installed[/green] the Pulumi CLI v{installed.version} at {installed.path}", highlight=False)
    folder = str(installed.path.parent)
    if folder not in os.environ.get("PATH", "").split(os.pathsep):
        out().print(f"lab uses it from there; for your shell too: export PATH={folder}:$PATH", highlight=False)
