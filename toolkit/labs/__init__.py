"""The labs: one `Lab` (toolkit.labs.base) per target, and the one place a command gets the lab of a stack.

`open_lab(stack, local=..., target=...)` picks the target (--local, --target, else the stack's lab:target, else
local: the embedded default, with no stack file at all) and opens that target's lab. Targets are registered in
`TARGETS` by module and class name, imported only when used, so `lab --help` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from toolkit.errors import LabError

if TYPE_CHECKING:
    from toolkit.console import Ui
    from toolkit.labs.base import Lab

# What a command works on without a stack file: the lab on this machine, no cloud account needed.
DEFAULT_TARGET = "local"
# target -> (module, class): a new target is one module and one line here.
TARGETS: dict[str, tuple[str, str]] = {
    "local": ("toolkit.labs.local", "LocalLab"),
    "ssh": ("toolkit.labs.ssh", "SshLab"),
    "gcp": ("toolkit.labs.gcp", "GcpLab"),
}


def lab_class(target: str) -> type[Lab]:
    try:
        module, name = TARGETS[target]
    except KeyError:
        raise LabError(f"{target!r} is not a target", hint=f"choose one of {', '.join(TARGETS)}") from None
    return getattr(importlib.import_module(module), name)


def target_of(stack_name: str, *, local: bool = False, target: str | None = None) -> str:
    """--local, else --target, else the stack's lab:target; without a stack file, local (the embedded default)."""
    from toolkit.config import stack

    if local:
        return DEFAULT_TARGET
    if target is not None:
        return target
    try:
        _, resolution = stack.load(stack_name)
    except stack.StackFileMissing:
        return DEFAULT_TARGET
    chosen = resolution.values.get("lab:target")
    return chosen if isinstance(chosen, str) else DEFAULT_TARGET


def open_lab(stack_name: str, *, local: bool = False, target: str | None = None, ui: Ui | None = None) -> Lab:
    """The stack's lab on its target."""
    return lab_class(target_of(stack_name, local=local, target=target)).open(stack_name, ui)
