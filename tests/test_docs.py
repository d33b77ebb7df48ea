"""The README and Pulumi.yaml cover every command and every configuration key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.main

from toolkit.cli.app import ALL, build
from toolkit.config import schema

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PROJECT = (ROOT / "Pulumi.yaml").read_text()


def commands(group, prefix=()) -> list[tuple[tuple[str, ...], object]]:
    found = []
    for name, command in group.commands.items():
        path = (*prefix, name)
        found.append((path, command))
        if hasattr(command, "commands"):
            found.extend(commands(command, path))
    return found


ALL_COMMANDS = commands(typer.main.get_command(build(ALL)))


def test_there_are_commands():
    assert {" ".join(p) for p, _ in ALL_COMMANDS} >= {"config", "config show", "config validate", "doctor"}


@pytest.mark.parametrize(("path", "command"), ALL_COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_command_has_help_and_is_in_the_readme(path, command):
    assert (command.help or "").strip(), f"lab {' '.join(path)} has no help text"
    assert f"lab {' '.join(path)}" in README, f"README does not mention `lab {' '.join(path)}`"


@pytest.mark.parametrize("key", schema.KEYS, ids=lambda k: k.name)
def test_every_key_is_documented(key):
    assert f"`{key.name}`" in README, f"README does not document {key.name}"
    line = re.search(rf"^#\s+{re.escape(key.name)} \((\w+), ([^)]*)\): (.+)$", PROJECT, re.MULTILINE)
    assert line, f"Pulumi.yaml does not document {key.name}"
    kind, default = line.group(1), line.group(2)
    assert kind == key.kind
    if key.required_for:
        assert default == f"required for {', '.join(key.required_for)}"
    elif key.derived:
        assert default == key.derived
    elif isinstance(key.default, bool):
        assert default == str(key.default).lower()
    elif key.default is None:
        assert default == "none"
    elif key.default == ():
        assert default == "[]"
    elif key.name != "lab:workerImage":  # documented by name: the full image path is long
        assert default == str(key.default)


def test_pulumi_project_file():
    assert re.search(r"^name: lab$", PROJECT, re.MULTILINE)
    assert re.search(r"^runtime: python$", PROJECT, re.MULTILINE)
    assert re.search(r"^main: infra/$", PROJECT, re.MULTILINE)
