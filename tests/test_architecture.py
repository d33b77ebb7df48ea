"""The tree is the architecture: each part of toolkit/ imports only parts below it (docs/architecture.md).

cli (the commands) -> labs (one per target) -> gcp, sweeps -> hosts, tracker -> cost -> config -> the helpers
(proc, console, environment, determinism, checkpoints) -> errors. A part never imports one above it or beside
it, so there are no cycles, and a newcomer can tell from a module's folder what it may depend on.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TOOLKIT = Path(__file__).resolve().parents[1] / "toolkit"
# Higher imports lower. Equal ranks may not import each other (siblings stay independent).
RANKS = {
    "cli": 6,
    "labs": 5,
    "budget": 5.7,  # the budget guard stops a lab (labs) and its sweeps (sweeps), priced by cost
    "data": 5.5,  # the datasets: the store picks a lab's (labs), the sync's sweep step prepares hosts (sweeps)
    "envs": 4.5,  # experiments' environments: the sweep's step prepares hosts (sweeps); labs name the stack's
    "gcp": 4,
    "sweeps": 4,
    "hosts": 3,
    "tracker": 3,
    "cost": 2,
    "config": 1,
    "proc": 0,
    "console": 0,
    "environment": 0,
    "determinism": 0,
    "checkpoints": 0,
    "errors": -1,
    "__init__": -1,
    "__main__": 7,
}
FOLDERS = {"cli", "labs", "gcp", "sweeps", "hosts", "tracker", "cost", "config"}


def part(path: Path) -> str:
    relative = path.relative_to(TOOLKIT)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def imported_parts(path: Path) -> set[str]:
    """The parts of toolkit a module imports, at its top or inside functions alike."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "toolkit":
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "toolkit" else [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "toolkit"]
        else:
            continue
        for name in names:
            pieces = name.split(".")
            if len(pieces) > 1 and pieces[1] in RANKS:
                found.add(pieces[1])
    return found


MODULES = sorted(p for p in TOOLKIT.rglob("*.py") if "__pycache__" not in p.parts and "_project" not in p.parts)


def test_every_module_belongs_to_a_ranked_part():
    assert {part(p) for p in MODULES} <= set(RANKS), {part(p) for p in MODULES} - set(RANKS)
    top_level = sorted(p.name for p in TOOLKIT.iterdir() if p.suffix == ".py")
    assert len(top_level) <= 8, f"toolkit/ holds a handful of modules and the parts' folders: {top_level}"
    assert {p.name for p in TOOLKIT.iterdir() if p.is_dir() and p.name != "__pycache__"} >= FOLDERS


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(TOOLKIT)))
def test_imports_flow_down(path):
    here = part(path)
    wrong = sorted(there for there in imported_parts(path) if there != here and RANKS[there] >= RANKS[here])
    assert not wrong, f"toolkit/{path.relative_to(TOOLKIT)} ({here}) imports {wrong}, which are not below it"


def test_no_command_compares_target_names():
    """Commands ask the lab; only toolkit/labs knows the targets (issue 13)."""
    for path in (TOOLKIT / "cli" / "commands").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        for name in ("local", "ssh", "gcp"):
            for compared in (f'== "{name}"', f'!= "{name}"', f'in ("{name}"'):
                assert compared not in text, f"{path.name} compares the target with {compared}"


def test_notebooks_public_import_paths_keep_working():
    import toolkit.determinism

    assert callable(toolkit.determinism.seed_everything)
