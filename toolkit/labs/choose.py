"""Which target a command works on: --local, --target, the stack's lab:target, or local without a stack."""

from __future__ import annotations

from toolkit.cli import options
from toolkit.config import stack
from toolkit.errors import LabError


def choose(stack_name: str, local: bool, target: options.TargetChoice | None) -> str:
    if local:
        return "local"
    if target is not None:
        return str(target.value)
    try:
        _, resolution = stack.load(stack_name)
    except stack.StackFileMissing:
        return "local"  # the embedded default: no stack, no cloud
    chosen = resolution.values.get("lab:target")
    return chosen if isinstance(chosen, str) else "local"


def require_local(target: str, command: str) -> None:
    """The ssh and gcp targets of this command are not built yet: say so, and what works."""
    if target != "local":
        raise LabError(
            f"`lab {command}` on the {target} target is not available yet",
            hint=f"run `lab {command} --local` for the lab on this machine",
        )


def require(target: str, command: str, supported: tuple[str, ...] = ("local", "ssh", "gcp")) -> None:
    """Refuse a target whose `lab <command>` is not built yet, naming what works."""
    if target not in supported:
        others = " or ".join(f"--target {t}" for t in supported)
        raise LabError(f"`lab {command}` on the {target} target is not available yet", hint=f"use {others}")
