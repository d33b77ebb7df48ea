"""`lab config show`: a stack's resolved settings, defaults filled in."""

from __future__ import annotations

import json
from typing import Any

from toolkit.cli import options
from toolkit.config import schema, stack
from toolkit.console import out
from toolkit.errors import LabError


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ", ".join(value) if value else "-"
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, schema.Secret):
        return str(value)
    return list(value) if isinstance(value, tuple) else value


def show(stack_name: options.Stack = options.STACK_DEFAULT, as_json: options.Json = False) -> None:
    """Show a stack's resolved settings: every key, its value and where the value came from."""
    stack_file, resolution = stack.load(stack_name)
    values, sources = resolution.values, resolution.sources
    if as_json:
        document = {
            "stack": stack_file.name,
            "file": str(stack_file.path),
            "config": {key.name: _json_value(values.get(key.name)) for key in schema.KEYS},
            "sources": {key.name: sources.get(key.name, "invalid") for key in schema.KEYS},
            "problems": [str(p) for p in resolution.problems],
        }
        out().print_json(json.dumps(document))
    else:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=escape(f"stack {stack_file.name} ({stack_file.path})"), title_justify="left")
        table.add_column("key", style="bold")
        table.add_column("value", overflow="fold")
        table.add_column("from", style="dim")
        bad = {p.key for p in resolution.problems}
        for key in schema.KEYS:
            shown = escape(_text(values.get(key.name)) if key.name in values else str(stack_file.raw.get(key.name)))
            table.add_row(
                key.name, f"[red]{shown}[/red]" if key.name in bad else shown, sources.get(key.name, "invalid")
            )
        out().print(table)
    if resolution.problems:
        count = len(resolution.problems)
        raise LabError(
            f"{stack_file.path.name} has {count} problem{'s' * (count != 1)}",
            hint=f"`lab config validate --stack {stack_name}` lists them",
        )
