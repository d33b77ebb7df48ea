"""Reading a stack file (Pulumi.<stack>.yaml): the toolkit's one way to get a stack's settings.

The lab's settings are the file's `config:`. Pulumi writes keys of its own beside it (ProjectStack in
sdk/go/common/workspace/project.go@73a66f48: secretsprovider, encryptedkey, encryptionsalt, environment): the
passphrase secrets provider stores `encryptionsalt` there the first time it runs
(pkg/secrets/passphrase/manager.go@ec7e8c0d), and without it the same passphrase no longer opens the stack's
secrets. Lab reads those keys, never calls them unknown, and keeps them when it writes the file again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.config import schema
from toolkit.config.paths import project_dir
from toolkit.errors import LabError

DEFAULT_STACK = "dev"
PULUMI_KEYS = ("secretsprovider", "encryptedkey", "encryptionsalt", "environment")


class StackFileMissing(LabError):
    """The stack has no file: callers that can do without one (the local target) catch this."""


@dataclass(frozen=True)
class StackFile:
    """A stack's name, the file it lives in, its raw `config:` mapping, and Pulumi's own top-level keys."""

    name: str
    path: Path
    raw: dict[str, Any]
    pulumi: dict[str, Any] = field(default_factory=dict)


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
    kept = {key: document[key] for key in PULUMI_KEYS if key in document}
    return StackFile(name=name, path=path, raw={str(k): v for k, v in config.items()}, pulumi=kept)


def keep_pulumi_keys(path: Path, text: str) -> str:
    """`text`, a stack file lab writes over `path`, with the Pulumi keys of the file there now put back before
    its `config:` (where Pulumi writes them); `text` itself when there are none (or no readable file)."""
    import yaml

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return text
    kept = {key: document[key] for key in PULUMI_KEYS if isinstance(document, dict) and key in document}
    if not kept:
        return text
    block = yaml.safe_dump(kept, default_flow_style=False, sort_keys=False, width=1000)
    lines = text.splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if line.startswith("config:")), len(lines))
    return "".join(lines[:at]) + block + "".join(lines[at:])


def load(stack: str, *, target: str | None = None) -> tuple[StackFile, schema.Resolution]:
    """Read and resolve a stack; the caller decides what to do with the problems."""
    stack_file = read(stack)
    return stack_file, schema.resolve(stack_file.raw, stack=stack_file.name, target=target)
