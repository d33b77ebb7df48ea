"""`lab status`: each component's (or host's) state, where it answers, and how old the latest backup is."""

from __future__ import annotations

from toolkit.cli import options


def status(
    local: options.Local = False,
    target: options.Target = None,
    stack_name: options.Stack = options.STACK_DEFAULT,
    as_json: options.Json = False,
) -> None:
    """Show the lab's components (state, URL, uptime) and the age of the latest backup."""
    from toolkit import labs
    from toolkit.budget import ledger
    from toolkit.budget.spend import Limits
    from toolkit.cli.render import show
    from toolkit.console import Ui

    ui = Ui(json=as_json)
    lab = labs.open_lab(stack_name, local=local, target=options.target_name(target), ui=ui)
    report = lab.status(ui)
    if Limits.of(lab.settings).any:
        found = ledger.verdict(lab.settings)
        report.document["budget"] = {**found.as_dict(), "guard": ledger.read(ledger.path_of(lab.stack)).fired}
        report.lines.append(found.line())
    show(report, as_json)
