"""How a running sweep looks to people: one table from its state (`toolkit.sweeps.service.snapshot`), the same
for `lab dispatch`'s live view and `lab sweep watch`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _gpus(gpus: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"gpu{g.get('index')} {g.get('utilization_pct', '?')}% {g.get('memory_used_mib', '?')}/"
        f"{g.get('memory_total_mib', '?')} MiB"
        for g in gpus
    )


def headline(state: dict[str, Any]) -> str:
    running = sum(1 for s in state.get("slots", []) if s.get("state") == "running")
    best = state.get("best")
    shown = "-" if best is None else f"{best:.6g}"
    return (
        f"{state.get('name', '?')} ({state.get('status', '?')}): {state.get('completed', 0)} done, {running} running, "
        f"{state.get('failed', 0)} failed of {state.get('planned', 0)} (+{state.get('earlier', 0)} earlier); "
        f"best {state.get('metric', '')} {shown}; {state.get('elapsed_s', 0):.0f} s"
    )


def table(state: dict[str, Any]) -> Table:
    from rich.table import Table

    view = Table(title=headline(state), title_justify="left")
    for column in ("slot", "trial", "elapsed", "params"):
        view.add_column(column)
    for slot in state.get("slots", []):
        if slot.get("state") == "running":
            view.add_row(
                slot["name"],
                str(slot.get("trial")),
                f"{slot.get('elapsed_s', 0):.0f} s",
                _params(slot.get("params", {})),
            )
        else:
            view.add_row(slot["name"], "-", "-", slot.get("note") or slot.get("state", "idle"))
    notes = [
        f"{name}: {_gpus(worker['gpus']) if worker.get('gpus') else ''}{worker.get('note', '')}"
        for name, worker in sorted((state.get("workers") or {}).items())
        if worker.get("gpus") or worker.get("note")
    ]
    if state.get("budget"):
        notes.append(str(state["budget"]))
    if state.get("warning"):
        notes.append(f"warning: {state['warning']}")
    if state.get("error"):
        notes.append(f"error: {state['error']}")
    if notes:
        view.caption, view.caption_justify = "\n".join(notes), "left"
    return view
