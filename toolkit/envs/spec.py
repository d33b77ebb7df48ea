"""What an experiment's environment is made of: its requirements files, read and hashed.

A `Spec` holds the files' text (a requirements.txt, or a pyproject.toml with its uv.lock). It travels to a host
as one argument (`encode`/`decode`: JSON, zlib, base64), where `env_hash` adds the host's Python version and what
a trial's kernel needs: equal hashes are the same environment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

from toolkit.envs import requirements
from toolkit.errors import LabError

REQUIREMENTS = "requirements.txt"
PYPROJECT = "pyproject.toml"
LOCK = "uv.lock"
KIND_REQUIREMENTS = "requirements"
KIND_LOCK = "uv.lock"
HASH_FORMAT = 1  # bump when what goes into the hash changes
MAX_ENCODED = 100_000  # one command-line argument (Linux allows 128 KiB); a lock compresses about 8x


@dataclass(frozen=True)
class Spec:
    kind: str  # KIND_REQUIREMENTS or KIND_LOCK
    files: dict[str, str]  # file name -> text
    source: str  # where it was read from (messages)

    @property
    def label(self) -> str:
        """How messages name it: the requirements file, or the lock."""
        return REQUIREMENTS if self.kind == KIND_REQUIREMENTS else LOCK


def stack_requirements(value: str | None) -> Path | None:
    """The stack's `lab:requirements` as a path: a relative one is taken from the lab's project folder (the one
    holding Pulumi.yaml and the stack files)."""
    if not value:
        return None
    from toolkit.config import paths

    path = Path(value).expanduser()
    return path if path.is_absolute() else paths.project_dir() / path


def find(folder: Path, stack_requirements: Path | None = None) -> Spec | None:
    """The environment a sweep names: its notebook's folder's files first, else the stack's; None: neither."""
    spec = _in_folder(folder)
    if spec is not None or stack_requirements is None:
        return spec
    path = stack_requirements
    if path.is_dir():
        spec = _in_folder(path)
        if spec is None:
            raise LabError(
                f"lab:requirements names {path}, which holds no {REQUIREMENTS} nor {PYPROJECT} with its {LOCK}",
                hint="name a requirements.txt, or a folder with pyproject.toml and uv.lock",
            )
        return spec
    if path.name == PYPROJECT:
        return _in_folder(path.parent, lock_required=True)
    return _requirements(path)


def _in_folder(folder: Path, *, lock_required: bool = False) -> Spec | None:
    pyproject, lock, requirements = folder / PYPROJECT, folder / LOCK, folder / REQUIREMENTS
    if pyproject.is_file() and lock.is_file():
        return Spec(KIND_LOCK, {PYPROJECT: _read(pyproject), LOCK: _read(lock)}, str(lock))
    if requirements.is_file() and not lock_required:
        return _requirements(requirements)
    if pyproject.is_file() and (lock_required or _has_dependencies(_read(pyproject))):
        raise LabError(
            f"{pyproject} has no {LOCK} beside it",
            hint=f"run `uv lock` in {folder} (or list the requirements in {REQUIREMENTS})",
        )
    return None


def _has_dependencies(pyproject: str) -> bool:
    try:
        import tomllib
    except ImportError:  # Python 3.10: no TOML reader; a pyproject without its lock is then left alone
        return False
    try:
        return bool(tomllib.loads(pyproject).get("project", {}).get("dependencies"))
    except tomllib.TOMLDecodeError:
        return False


def _requirements(path: Path) -> Spec:
    text = _read(path)
    requirements.check(text, str(path))  # packages and https indexes only (toolkit.envs.requirements)
    return Spec(KIND_REQUIREMENTS, {REQUIREMENTS: text}, str(path))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise LabError(f"cannot read {path}: {error}", hint="check the file") from error


def env_hash(spec: Spec, python: str, kernel_packages: list[str]) -> str:
    """The environment's identity (sha256 hex): its files' text, the Python version (major.minor) it runs on
    and the packages added for the trial's kernel."""
    document = {
        "format": HASH_FORMAT,
        "kind": spec.kind,
        "files": dict(sorted(spec.files.items())),
        "python": python,
        "kernel": sorted(kernel_packages),
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def kernel_name(digest: str) -> str:
    """The Jupyter kernel trials of that environment run with."""
    return f"lab-env-{digest[:12]}"


def encode(spec: Spec) -> str:
    text = base64.urlsafe_b64encode(zlib.compress(json.dumps({"kind": spec.kind, "files": spec.files}).encode(), 9))
    if len(text) > MAX_ENCODED:
        raise LabError(
            f"{spec.source} is too large to send to a host ({len(text)} bytes compressed)",
            hint=f"keep the environment's files under {MAX_ENCODED // 1000} kB compressed",
        )
    return text.decode()


def decode(text: str, source: str = "the sweep") -> Spec:
    document = json.loads(zlib.decompress(base64.urlsafe_b64decode(text.encode())))
    kind, files = document["kind"], document["files"]
    if kind not in (KIND_REQUIREMENTS, KIND_LOCK) or not isinstance(files, dict):
        raise LabError(f"an environment of unknown kind {kind!r}", hint="the dispatcher and the host differ in version")
    allowed = {REQUIREMENTS} if kind == KIND_REQUIREMENTS else {PYPROJECT, LOCK}
    if set(files) != allowed or not all(isinstance(v, str) for v in files.values()):
        raise LabError(f"an environment with files {sorted(files)}", hint=f"expected {sorted(allowed)}")
    if kind == KIND_REQUIREMENTS:  # checked where it was read, and again on the host that installs it
        requirements.check(str(files[REQUIREMENTS]), source)
    return Spec(kind, {str(k): str(v) for k, v in files.items()}, source)
