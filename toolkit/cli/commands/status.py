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
    from toolkit.errors import LabError

    ui = Ui(json=as_json)
    lab = labs.open_lab(stack_name, local=local, target=options.target_name(target), ui=ui)
    report = lab.status(ui)
    if Limits.of(lab.settings).any:
        try:
            ledger.sync(lab)  # ssh, gcp: what the tracker's guard did, taken into this machine's records
        except LabError as exc:
            report.lines.append(f"the tracker's budget guard could not be asked: {exc.one_line()}")
        found = ledger.verdict(lab.settings)
        fired = ledger.read(ledger.path_of(lab.stack)).fired
        report.document["budget"] = {**found.as_dict(), "guard": fired}
        report.lines.append(found.line())
        if fired:
            report.lines.append(ledger.describe_fired(fired) + "; `lab up --budget USD` starts it again")
    show(report, as_json)
