"""Reading a stack file (Pulumi.<stack>.yaml): the toolkit's one way to get a stack's settings."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit import schema
from toolkit.errors import LabError
from toolkit.paths import project_dir

DEFAULT_STACK = "dev"


class StackFileMissing(LabError):
    """The stack has no file: callers that can do without one (the local target) catch this."""


@dataclass(frozen=True)
class StackFile:
    """A stack's name, the file it lives in, and its raw `config:` mapping."""

    name: str
    path: Path
    raw: dict[str, Any]


def stack_path(stack: str) -> tuple[str, Path]:
    """The stack's name and file. `stack` is a name (dev) or a path to a stack file."""
    if stack.endswith((".yaml", ".yml")) or os.sep in stack:
        path = Path(stack).expanduser()
        name = path.name.removesuffix(".yaml").removesuffix(".yml")
        return name.removeprefix("Pulumi."), path
    return stack, project_dir() / f"Pulumi.{stack}.yaml"


def read(stack: str) -> StackFile:
    """Load a stack file; every way it can be unreadable is a one-line LabError."""
    import yaml

    name, path = stack_path(stack)
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise LabError(f"{name!r} is not a stack name", hint="use letters, digits, '-', '_' or '.'")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StackFileMissing(
            f"no stack file {path}", hint="create it (copy Pulumi.dev.yaml) or pick another with --stack"
        ) from None
    except OSError as exc:
        raise LabError(f"cannot read {path}: {exc.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise LabError(
            f"{path} is not valid YAML{where}", hint=str(getattr(exc, "problem", "") or "check the indentation")
        ) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise LabError(f"{path} must be a mapping with a `config:` section")
    config = document.get("config") or {}
    if not isinstance(config, dict):
        raise LabError(f"{path}: `config:` must be a mapping of keys to values")
    return StackFile(name=name, path=path, raw={str(k): v for k, v in config.items()})


def load(stack: str, *, target: str | None = None) -> tuple[StackFile, schema.Resolution]:
    """Read and resolve a stack; the caller decides what to do with the problems."""
    stack_file = read(stack)
    return stack_file, schema.resolve(stack_file.raw, stack=stack_file.name, target=target)
