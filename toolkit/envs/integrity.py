"""What an installed environment is made of, as one digest: an environment is reused only when it still matches.

Trials run in an environment as the user who installed it, so notebook code can change it for the sweeps after
(an edited module, a dropped `.pth`). The digest, written into the environment's marker at install and compared
before each reuse (toolkit.envs.install), covers:

- every file that a package's `RECORD` lists (its modules, data, scripts in `bin/`, and the RECORD itself), by
  content (sha256): an edited, replaced or removed file changes it;
- the names directly in site-packages: a new `.pth` (run at every start of the environment's Python), a new module
  or package that shadows one of the lab's kernel.

It does not cover files a RECORD does not list inside a package's folder (a `__pycache__/*.pyc` written after the
install, which Python prefers to the source when its stamp matches; a new submodule nothing imports), the lab's
own packages the environment sees after its own, nor someone who rewrites the marker too (the user the trials run
as can): it catches a poisoned environment, it does not make one impossible. Hashing reads the whole environment
(a few seconds for a CUDA PyTorch), once per sweep per host.
"""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

CHUNK = 1 << 20
# Written in site-packages after the install by whatever imports there (Python's bytecode cache of top-level modules)
UNLISTED = frozenset({"__pycache__"})


def site_packages(venv: Path) -> list[Path]:
    """The venv's site-packages folders (lib/pythonX.Y/site-packages), found without running its Python."""
    return sorted(path for path in venv.glob("lib*/python*/site-packages") if path.is_dir())


def digest(venv: Path) -> str:
    """The environment's files as one sha256 hex digest (see the module's docstring for what it covers)."""
    root = venv.resolve()
    total = hashlib.sha256()
    for site in site_packages(root):
        listed: set[Path] = set()
        for record in sorted(site.glob("*.dist-info/RECORD")):
            listed.add(record)
            listed.update(_listed(site, record, root))
        for path in sorted(listed):
            total.update(f"{path.relative_to(root)}\t{_file_hash(path)}\n".encode())
        for name in sorted(entry.name for entry in site.iterdir() if entry.name not in UNLISTED):
            total.update(f"{site.relative_to(root)}/{name}\n".encode())
    return total.hexdigest()


def _listed(site: Path, record: Path, root: Path) -> set[Path]:
    """The files `record` lists, those inside the venv (a RECORD's paths are relative to site-packages)."""
    found: set[Path] = set()
    with record.open(newline="", encoding="utf-8", errors="replace") as handle:
        for row in csv.reader(handle):
            if not row or not row[0]:
                continue
            path = Path(os.path.normpath(site / row[0]))
            if path.is_relative_to(root):
                found.add(path)
    return found


def _file_hash(path: Path) -> str:
    """sha256 of a file's content; `missing` when it is gone, `link:TARGET` for a symlink (never followed)."""
    if path.is_symlink():
        return f"link:{path.readlink()}"
    if not path.is_file():
        return "missing"
    hashed = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            hashed.update(chunk)
    return hashed.hexdigest()
