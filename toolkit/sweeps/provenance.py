"""Where a sweep's notebook came from: the notebook's path, the git commit, its path in the repository, whether the
working tree was dirty and a hash of the difference.

Read where `lab dispatch` runs (a terminal sweep), or there before the sweep is handed over (a detached sweep
carries it in its sweep.json, since the tracker has only a copy of the notebook's folder), and put on every trial's
run as the same tags either way:

  lab.notebook               the notebook's path on the machine it was dispatched from
  mlflow.source.git.commit   HEAD of the notebook's repository (MLflow's own tag: its UI shows it)
  lab.git.path               the notebook's path in the repository
  lab.git.dirty              "true" when the tree had changes not committed (untracked files included)
  lab.git.diff_sha256        then: sha256 of `git diff HEAD --binary` and of the untracked files' names
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from toolkit import proc
from toolkit.errors import LabError

GIT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Provenance:
    notebook: str  # where it was dispatched from
    commit: str | None = None
    path: str | None = None  # in its repository, with forward slashes
    dirty: bool | None = None
    diff_sha256: str | None = None

    def tags(self) -> dict[str, str]:
        tags = {"lab.notebook": self.notebook}
        if self.commit:
            tags["mlflow.source.git.commit"] = self.commit
            tags["lab.git.path"] = self.path or ""
            tags["lab.git.dirty"] = "true" if self.dirty else "false"
            if self.diff_sha256:
                tags["lab.git.diff_sha256"] = self.diff_sha256
        return tags

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, document: object) -> Provenance | None:
        """The provenance a bundle's sweep.json carries; None when it carries none (a bundle from an older `lab`)."""
        if not isinstance(document, dict) or not isinstance(document.get("notebook"), str):
            return None

        def text(key: str) -> str | None:
            value = document.get(key)
            return value if isinstance(value, str) else None

        dirty = document.get("dirty")
        return cls(
            document["notebook"], text("commit"), text("path"), dirty if isinstance(dirty, bool) else None,
            text("diff_sha256"),
        )  # fmt: skip


def of(notebook: Path) -> Provenance:
    """The provenance of `notebook` as it is now: its git facts when it is in a repository with a commit."""
    notebook = notebook.resolve()
    found = _git(notebook.parent, "rev-parse", "--show-toplevel", "HEAD")
    lines = found.splitlines() if found is not None else []
    if len(lines) != 2:
        return Provenance(str(notebook))  # not in git, git missing, or a repository without a commit yet
    top, commit = Path(lines[0]).resolve(), lines[1]
    try:
        path = notebook.relative_to(top).as_posix()
    except ValueError:
        path = None
    status = _git(top, "status", "--porcelain")
    dirty = bool(status) if status is not None else None
    return Provenance(str(notebook), commit, path, dirty, _diff_sha256(top) if dirty else None)


def _diff_sha256(top: Path) -> str | None:
    """sha256 of the tracked files' difference from HEAD (bytes as git wrote them) and the untracked files' names."""
    with tempfile.TemporaryDirectory(prefix="lab-diff-") as scratch:
        written = Path(scratch) / "diff"
        if _git(top, "diff", "HEAD", "--binary", "--no-ext-diff", "--no-color", f"--output={written}") is None:
            return None
        digest = hashlib.sha256(written.read_bytes() if written.is_file() else b"")
    untracked = _git(top, "ls-files", "--others", "--exclude-standard", "-z")
    digest.update(b"\0untracked\0" + (untracked or "").encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _git(folder: Path, *argv: str) -> str | None:
    """git's output in `folder`, stripped; None when git fails or is not installed (provenance is then unknown)."""
    try:
        ran = proc.run(["git", "-C", str(folder), *argv], check=False, timeout=GIT_TIMEOUT_S)
    except (LabError, UnicodeDecodeError):
        return None
    return ran.stdout.strip() if ran.returncode == 0 else None
