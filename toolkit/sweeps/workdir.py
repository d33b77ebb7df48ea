"""Each trial's working folder on this machine: its own, so trials running at once never write over each other's
files (`model.txt`), with the notebook's neighbouring files in it, so `pd.read_csv("data.csv")` still reads the file
beside the notebook.

The folder is the executed notebook's path without `.ipynb` (`out/quick/quickstart-3-<run_id>/` beside
`out/quick/quickstart-3-<run_id>.ipynb`). In it, each entry of the notebook's folder: a small file (up to
`COPY_LIMIT`) as a copy of its own, a bigger file or a folder as a link to the original (shared by every trial, so
written to, it changes the original). The kernel also gets `LAB_NOTEBOOK_DIR` (the notebook's folder) and
`LAB_TRIAL_DIR` (this folder).

A worker (ssh, gcp) cannot link to this machine's files: each trial there gets copies of what `sent` lists (the
notebook's folder less hidden files, caches, `out/`), at most SENT_LIMIT_BYTES in all. The `step` below refuses a
bigger folder before the first trial, as a detached sweep's bundle is refused (`toolkit.sweeps.service.measure`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.errors import LabError

if TYPE_CHECKING:
    from toolkit.sweeps.prepare import HostCommands, Prepared
    from toolkit.sweeps.space import Space

COPY_LIMIT = 1024 * 1024  # a file up to this size is copied into each trial's folder; a bigger one is linked
SKIPPED = frozenset({".ipynb_checkpoints"})
NOTEBOOK_DIR_ENV = "LAB_NOTEBOOK_DIR"
TRIAL_DIR_ENV = "LAB_TRIAL_DIR"
# What a sweep leaves out of the notebook's folder when it takes the folder elsewhere (a worker, the tracker).
SKIPPED_DIRS = frozenset(
    {".git", "__pycache__", ".ipynb_checkpoints", ".venv", "venv", "node_modules", "mlruns", "out"}
)
SENT_LIMIT_BYTES = 64 * 1024 * 1024  # what a sweep takes beside its notebook; datasets belong in `lab data`


def folder_of(output: Path) -> Path:
    """A trial's working folder: beside its executed notebook, named as it without `.ipynb`."""
    return output.with_suffix("")


def make(notebook_dir: Path, folder: Path) -> Path:
    """The trial's folder with the notebook folder's entries in it (copied when small, else linked); an entry that
    holds the trial's folder itself (an output folder inside the notebook's) is left out."""
    folder.mkdir(parents=True, exist_ok=True)
    inside = folder.resolve()
    for entry in sorted(notebook_dir.iterdir()):
        target = folder / entry.name
        if entry.name in SKIPPED or target.exists() or target.is_symlink():
            continue
        original = entry.resolve()
        if inside.is_relative_to(original):
            continue
        if entry.is_file() and original.stat().st_size <= COPY_LIMIT:
            shutil.copy2(original, target)
        else:
            target.symlink_to(original, target_is_directory=original.is_dir())
    return folder


# -- the notebook's folder, taken elsewhere ----------------------------------------------------------------------
def _walk(base: Path) -> Iterator[Path]:
    for top, dirs, names in os.walk(base):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("."))
        for name in sorted(names):
            path = Path(top) / name
            if path.is_file() and not name.startswith("."):
                yield path


def sent(base: Path, limit: int = SENT_LIMIT_BYTES, beside: int = 0) -> list[Path]:
    """The files of the notebook's folder `base` a sweep takes elsewhere (hidden files, .git, out/ and caches left
    out); refused past `limit` bytes in all (with `beside` bytes the sweep takes too), naming the biggest."""
    files = list(_walk(base))
    sizes = {path: path.stat().st_size for path in files}
    total = sum(sizes.values()) + beside
    if total > limit:
        biggest = sorted(sizes, key=lambda p: -sizes[p])[:3]
        named = ", ".join(f"{p.relative_to(base)} ({sizes[p] / 2**20:.1f} MB)" for p in biggest)
        raise LabError(
            f"the sweep's folder {base} holds {total / 2**20:.1f} MB, more than the {limit / 2**20:.0f} MB a sweep "
            f"takes with it (biggest: {named})",
            hint="move data out of the notebook's folder (`lab data push` it, and name it under `data:` in the "
            "space file); a sweep takes the notebook, its code and small files",
        )
    return files


@dataclass(frozen=True)
class FolderStep:
    """A sweep on workers takes its notebook's folder to each trial: refused before the first trial when too big."""

    folder: Path
    name: str = "notebook's folder"

    def check(self) -> None:
        sent(self.folder)

    def on_host(self, host: HostCommands) -> Prepared:
        from toolkit.sweeps.prepare import Prepared

        return Prepared()  # each trial carries the folder's files (`toolkit.sweeps.ssh_slots`)


def step(space: Space, folder: Path, place: Any, notebook: Path | None = None) -> FolderStep | None:
    """Listed in toolkit.sweeps.prepare.STEP_FACTORIES: a step only where some slot runs on another machine."""
    from toolkit.sweeps.prepare import host_of

    return FolderStep(folder) if any(not host_of(slot).local for slot in place.slots) else None
