"""The sweep's environment step (toolkit.sweeps.prepare): each host installs or finds the environment the sweep
names before its first trial there, and imports the notebook's top-level modules in it (one it lacks stops the sweep
before any trial, naming the module and the file to add it to); its trials run in that environment's kernel, their
runs tagged with its hash.

A sweep whose notebook's folder names no requirements, on a stack without `lab:requirements`, runs in the lab's own
kernel: its step only looks for the notebook's top-level modules there (`KernelModulesStep`: found, not imported, so
it costs a Python start per host), so a module the lab's kernel lacks stops the sweep before any trial, naming it
and the file to add it to. A notebook that installs its own packages (`%pip install`, `!pip install`) is not looked
at: what it imports may come from that install.
"""

from __future__ import annotations

import json
import re
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
# Run with the host's Python (`python -c FIND name ...`): one JSON line, the names it cannot find.
FIND = (
    "import importlib.util, json, sys\n"
    "def found(name):\n"
    "    try:\n"
    "        return importlib.util.find_spec(name) is not None\n"
    "    except (ImportError, ValueError):\n"
    "        return False\n"
    "print(json.dumps([name for name in sys.argv[1:] if not found(name)]))\n"
)
# A notebook line that installs packages itself: what it imports may come from there.
INSTALLS = re.compile(r"^\s*[%!]\s*(?:pip3?|uv\s+pip|conda|mamba)\s+install\b", re.MULTILINE)


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


@dataclass(frozen=True)
class KernelModulesStep:
    """A sweep in the lab's own kernel: the notebook's top-level modules must be there (found, not imported)."""

    imports: tuple[str, ...]
    name: str = "notebook's imports"

    def check(self) -> None:
        return None

    def on_host(self, host: HostCommands) -> Prepared:
        ran = host.run([host.python, "-c", FIND, *self.imports], timeout=PREPARE_TIMEOUT_S)
        try:
            missing = json.loads(ran.stdout.strip().splitlines()[-1]) if ran.returncode == 0 else None
        except (ValueError, IndexError):
            missing = None
        if not isinstance(missing, list):
            raise LabError(
                f"{host.name}: cannot look for the notebook's modules: {_last_line(ran.stderr) or ran.stdout}"
            )
        if missing:
            named = ", ".join(repr(str(name)) for name in missing)
            raise LabError(
                f"{host.name}: the notebook imports {named}, which the lab's kernel does not provide: no trial was run",
                hint=f"add the package{'s' * (len(missing) > 1)} that provide{'s' * (len(missing) == 1)} {named} to a "
                "requirements.txt beside the notebook (or the stack's lab:requirements) and dispatch again",
            )
        return Prepared()


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


def step(
    space: Space, folder: Path, place: SweepPlace | None, notebook: Path | None = None
) -> EnvironmentStep | KernelModulesStep | None:
    """The environment step of a sweep whose notebook's folder, or whose stack, names requirements; with the
    notebook's top-level modules, to import on each host before its first trial. Without requirements: the
    modules looked for in the lab's kernel (none when the notebook installs its own, or imports nothing)."""
    stack_requirements = getattr(place, "requirements", None)
    found = envspec.find(folder, Path(stack_requirements) if stack_requirements else None)
    modules = imports.of_notebook(notebook) if notebook is not None else ()
    if found is not None:
        return EnvironmentStep(found, modules)
    if not modules or notebook is None or installs_its_own(notebook):
        return None
    return KernelModulesStep(modules)


def installs_its_own(notebook: Path) -> bool:
    """Whether a code cell of the notebook installs packages (`%pip install`, `!pip install`, conda, uv pip)."""
    cells = json.loads(notebook.read_text(encoding="utf-8")).get("cells", [])
    for cell in cells:
        source = cell.get("source", "") if cell.get("cell_type") == "code" else ""
        if INSTALLS.search("".join(source) if isinstance(source, list) else str(source)):
            return True
    return False
