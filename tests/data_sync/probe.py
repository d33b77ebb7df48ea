"""What the dataset tests share: a notebook that reads a dataset through toolkit.data.path and tags its run with
the digest of every file's path and bytes, and the same digest of a folder here."""

from __future__ import annotations

import hashlib
from pathlib import Path

NOTEBOOK = Path(__file__).with_name("reads_data.ipynb")


def digest(folder: Path) -> str:
    """sha256 over each file's posix path, a NUL and its bytes, in path order (as the notebook computes it)."""
    made = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        made.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return made.hexdigest()


def space(folder: Path, datasets: str, trials_param: str = "x") -> Path:
    """A space file for the notebook: x in [0, 1], a seeded sampler, `data: [datasets]`."""
    path = folder / "data-space.yml"
    path.write_text(
        "objective: {metric: val_loss, direction: minimize}\n"
        f"params:\n  {trials_param}: {{type: float, low: 0.0, high: 1.0}}\n"
        "sampler: {name: random, seed: 7}\n"
        f"data: [{datasets}]\n"
    )
    return path


def make_dataset(folder: Path, files: int = 30) -> Path:
    for i in range(files):
        path = folder / f"split{i % 3}" / f"item{i:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(hashlib.sha256(str(i).encode()).digest() * (50 + i))
    (folder / "labels.csv").write_text("".join(f"item{i:03d},{i % 10}\n" for i in range(files)))
    return folder
