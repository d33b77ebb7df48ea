"""Where the lab keeps things: LAB_HOME (state) and the project folder (Pulumi.yaml, stack files)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from toolkit.errors import LabError

PROJECT_FILE = "Pulumi.yaml"
PROJECT_NAME = "lab"


def lab_home() -> Path:
    """LAB_HOME, default ~/.lab: per-stack folders with backups, PIDs, logs and secrets."""
    value = os.environ.get("LAB_HOME", "").strip()
    if value:
        return Path(value).expanduser()
    return Path.home() / ".lab"


def pulumi_cli_root() -> Path:
    """Where `lab doctor --install-pulumi` puts the Pulumi CLI (used when no `pulumi` is on PATH)."""
    return lab_home() / "pulumi-cli"


def stack_home(stack: str) -> Path:
    return lab_home() / "stacks" / stack


def is_lab_project(folder: Path) -> bool:
    project_file = folder / PROJECT_FILE
    if not project_file.is_file():
        return False
    for line in project_file.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("name:"):
            return line.split(":", 1)[1].strip().strip("'\"") == PROJECT_NAME
    return False


def packaged_project() -> Path:
    """The project files that ship with the toolkit: the checkout itself, or the copy in the wheel."""
    package = Path(__file__).resolve().parent.parent  # toolkit/
    for candidate in (package.parent, package / "_project"):
        if is_lab_project(candidate):
            return candidate
    raise LabError("the lab's project files (Pulumi.yaml, infra/) are missing from this install", hint="reinstall lab")


def project_dir() -> Path:
    """The folder holding Pulumi.yaml and the stack files.

    LAB_PROJECT_DIR if set; else the nearest folder from the current one upwards that holds the lab's
    Pulumi.yaml; else the checkout this toolkit runs from; else the current folder.
    """
    value = os.environ.get("LAB_PROJECT_DIR", "").strip()
    if value:
        folder = Path(value).expanduser()
        if not is_lab_project(folder):
            raise LabError(
                f"LAB_PROJECT_DIR={value} holds no Pulumi.yaml of the lab project",
                hint="point it at the folder with the lab's Pulumi.yaml, or unset it",
            )
        return folder
    cwd = Path.cwd()
    for folder in (cwd, *cwd.parents):
        if is_lab_project(folder):
            return folder
    checkout = Path(__file__).resolve().parents[2]  # toolkit/config/paths.py -> the checkout
    return checkout if is_lab_project(checkout) else cwd


def install_command(extra: str) -> str:
    """How to add an extra to this install: from the checkout when lab runs from one."""
    try:
        project = packaged_project()
    except LabError:
        project = None
    if project is not None and (project / "pyproject.toml").is_file():
        return f"{sys.executable} -m pip install -e '{project}[{extra}]'"
    return f"{sys.executable} -m pip install 'lab[{extra}]'"
