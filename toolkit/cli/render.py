"""How a command shows what a lab answered: its document as JSON (--json), or its tables and lines for people;
then the failure the report ends with, if any (its exit code)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from toolkit.console import out

if TYPE_CHECKING:
    from toolkit.labs.base import Report, Table


def table(shown: Table) -> object:
    from rich.table import Table as RichTable

    made = RichTable(title=shown.title, title_justify="left")
    for column in shown.columns:
        made.add_column(column)
    for row in shown.rows:
        made.add_row(*row)
    return made


def show(report: Report, as_json: bool) -> None:
    if as_json:
        out().print_json(json.dumps(report.document, default=str))
    else:
        for shown in report.tables:
            out().print(table(shown))
        for line in report.lines:
            out().print(line)
    if report.failure is not None:
        raise report.failure
