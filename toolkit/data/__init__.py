"""Datasets: a notebook's view of them (`toolkit.data.path`), the store (`store`, `manifest`), the sync onto a
host (`fetch`, `serve`, `sweep`).

In a trial's kernel, `LAB_DATA` names the root of the host's copies (`LAB_DATA/NAME/VERSION/...`) and
`LAB_DATA_VERSIONS` the versions the sweep's space file resolved to (`cifar100=3f2a9c0d1b7e,stl10=v2`).
This module imports nothing heavy: a notebook pays nothing for it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from toolkit.errors import LabError

ROOT_ENV = "LAB_DATA"  # the root of this host's copies
VERSIONS_ENV = "LAB_DATA_VERSIONS"  # NAME=VERSION,... : the versions a sweep's trials read
STATE = ".lab"  # what syncs keep beside the copies (toolkit.data.fetch)


class DatasetMissing(LabError, FileNotFoundError):
    """The dataset (or the version the sweep names) is not on this host."""


def root() -> Path:
    """LAB_DATA; outside the lab's kernels, the local lab's `$LAB_HOME/data`."""
    value = os.environ.get(ROOT_ENV, "").strip()
    if value:
        return Path(value)
    home = os.environ.get("LAB_HOME", "").strip()
    return (Path(home).expanduser() if home else Path.home() / ".lab") / "data"


def versions(text: str | None = None) -> dict[str, str]:
    """LAB_DATA_VERSIONS as {name: version}."""
    text = os.environ.get(VERSIONS_ENV, "") if text is None else text
    pairs = (item.split("=", 1) for item in text.replace(";", ",").split(",") if "=" in item)
    return {name.strip(): version.strip() for name, version in pairs}


def complete(base: Path, name: str, version: str) -> bool:
    """Whether a sync finished that version here (every file fetched and checked)."""
    try:
        return bool(json.loads((base / STATE / name / f"{version}.json").read_bytes()).get("complete"))
    except (OSError, ValueError, AttributeError):
        return False


def path(name: str) -> Path:
    """The local folder of dataset `name`: the version the sweep names (LAB_DATA_VERSIONS), else the newest one
    synced to this host. A one-line error when it is not there."""
    base = root()
    version = versions().get(name)
    if version is not None:
        if complete(base, name, version):
            return base / name / version
        raise DatasetMissing(
            f"dataset {name}@{version} is not in {base}",
            hint="the sweep fetches it before its first trial; outside a sweep, list it in lab:datasets",
        )
    present = (
        [p for p in (base / name).iterdir() if p.is_dir() and complete(base, name, p.name)]
        if (base / name).is_dir()
        else []
    )
    if not present:
        raise DatasetMissing(
            f"dataset {name} is not in {base}",
            hint="name it in the space file's data: list, or in the stack's lab:datasets",
        )
    return max(present, key=lambda p: (_pushed_at(base, name, p.name), p.name))


def _pushed_at(base: Path, name: str, version: str) -> str:
    """When that version was pushed, from the manifest the sync kept ('' when unknown)."""
    try:
        document = json.loads((base / STATE / name / "manifests" / f"{version}.json").read_bytes())
        return str(document["manifest"]["pushed_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
