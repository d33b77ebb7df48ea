"""The sweep's environment step (toolkit.sweeps.prepare): each host installs or finds the environment the sweep
names before its first trial there, and imports the notebook's top-level modules in it (one it lacks stops the sweep
before any trial, naming the module and the file to add it to); its trials run in that environment's kernel, their
runs tagged with its hash.

A sweep whose notebook's folder names no requirements, on a stack without `lab:requirements`, gets no step: its
trials run in the lab's own kernel, as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.config import paths
from toolkit.envs import imports
from toolkit.envs import spec as envspec
from toolkit.errors import LabError
from toolkit.sweeps.prepare import PREPARE_TIMEOUT_S, HostCommands, Prepared

if TYPE_CHECKING:
    from toolkit.sweeps.place import SweepPlace
    from toolkit.sweeps.space import Space

TAG = "lab.env"  # the MLflow tag on each trial's run: the environment's hash


@dataclass(frozen=True)
class EnvironmentStep:
    spec: envspec.Spec
    imports: tuple[str, ...] = ()  # the notebook's top-level modules (toolkit.envs.imports), imported on each host
    name: str = "environment"

    def check(self) -> None:
        envspec.encode(self.spec)  # too large to send is found here, before any trial

    def on_host(self, host: HostCommands) -> Prepared:
        argv = [host.python, "-m", "toolkit.envs.install", "--spec", envspec.encode(self.spec)]
        argv += ["--source", self.spec.source]
        if self.imports:
            argv += ["--imports", ",".join(self.imports)]
        if host.local:  # the local lab's own, whatever else this machine is
            argv += ["--root", str(paths.lab_home() / "envs")]
        ran = host.run(argv, timeout=PREPARE_TIMEOUT_S)
        answer = _answer(ran.stdout)
        if ran.returncode != 0 or "kernel" not in answer:
            detail = answer.get("error") or _last_line(ran.stderr) or f"exit code {ran.returncode}"
            hint = answer.get("hint") or f"fix {self.spec.source} and dispatch again"
            raise LabError(f"{host.name}: {detail}", hint=str(hint))
        return Prepared(kernel=str(answer["kernel"]), tags={TAG: str(answer["hash"])})


def _answer(stdout: str) -> dict[str, object]:
    for line in reversed(stdout.strip().splitlines()):
        try:
            document = json.loads(line)
        except ValueError:
            continue
        if isinstance(document, dict):
            return document
    return {}


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def step(space: Space, folder: Path, place: SweepPlace | None, notebook: Path | None = None) -> EnvironmentStep | None:
    """The environment step of a sweep whose notebook's folder, or whose stack, names requirements; with the
    notebook's top-level modules, to import on each host before its first trial."""
    stack_requirements = getattr(place, "requirements", None)
    found = envspec.find(folder, Path(stack_requirements) if stack_requirements else None)
    if found is None:
        return None
    return EnvironmentStep(found, imports.of_notebook(notebook) if notebook is not None else ())
