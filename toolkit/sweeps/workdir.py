"""Each trial's working folder on this machine: its own, so trials running at once never write over each other's
files (`model.txt`), with the notebook's neighbouring files in it, so `pd.read_csv("data.csv")` still reads the file
beside the notebook.

The folder is the executed notebook's path without `.ipynb` (`out/quick/quickstart-3-<run_id>/` beside
`out/quick/quickstart-3-<run_id>.ipynb`). In it, each entry of the notebook's folder: a small file (up to
`COPY_LIMIT`) as a copy of its own, a bigger file or a folder as a link to the original (shared by every trial, so
written to, it changes the original). The kernel also gets `LAB_NOTEBOOK_DIR` (the notebook's folder) and
`LAB_TRIAL_DIR` (this folder).
"""

from __future__ import annotations

import shutil
from pathlib import Path

COPY_LIMIT = 1024 * 1024  # a file up to this size is copied into each trial's folder; a bigger one is linked
SKIPPED = frozenset({".ipynb_checkpoints"})
NOTEBOOK_DIR_ENV = "LAB_NOTEBOOK_DIR"
TRIAL_DIR_ENV = "LAB_TRIAL_DIR"


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
