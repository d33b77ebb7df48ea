"""The tree is the architecture: each part of toolkit/ imports only parts below it (docs/architecture.md).

cli (the commands) -> labs (one per target) -> gcp, sweeps -> hosts, tracker -> cost -> config -> the helpers
(proc, console, environment, determinism, checkpoints) -> errors. A part never imports one above it or beside
it, so there are no cycles, and a newcomer can tell from a module's folder what it may depend on.
"""

from __future__ import annotations

import ast
import re
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


BY_NAME = {"import_module", "__import__"}  # importlib.import_module(...) or import_module(...), and __import__(...)
MODULE_NAME = re.compile(r"toolkit(\.\w+)+(:\w+)?")  # "toolkit.data.sweep", or "toolkit.data.sweep:step"
# By-name imports that go up, each a known break of the order to undo, not a pattern to follow: sweeps/prepare.py
# imports the sweep steps of data and envs (above it) by name from its STEP_FACTORIES, and both of those import
# toolkit.sweeps.prepare, a cycle. A test below fails once an entry is no longer needed, so the list only shrinks.
UPWARD_BY_NAME: dict[str, set[str]] = {"sweeps/prepare.py": {"data", "envs"}}


def static_imports(tree: ast.Module) -> list[str]:
    """The toolkit modules an `import` or `from ... import` names, at the module's top or inside functions alike."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "toolkit":
            names += [f"{node.module}.{a.name}" for a in node.names] if node.module == "toolkit" else [node.module]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.split(".")[0] == "toolkit"]
    return names


def literal_start(node: ast.expr) -> str | None:
    """What a by-name import's argument spells before run time: a literal string, or an f-string's literal start
    (f"toolkit.cli.commands.{module}" -> "toolkit.cli.commands."); None for a name computed at run time."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value)
    return None


def by_name_imports(tree: ast.Module) -> list[str]:
    """The modules imported by name: `importlib.import_module("toolkit....")` or `__import__("toolkit....")` with a
    literal (an f-string: its literal start). A module that imports a name computed at run time imports from a
    registry: every toolkit module its top-level assignments name counts ("toolkit.data.sweep:step" in
    sweeps/prepare.py's STEP_FACTORIES), since the test cannot tell which of them the name will be."""
    names: list[str] = []
    computed = False
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        if called not in BY_NAME:
            continue
        literal = literal_start(node.args[0])
        if literal is None:
            computed = True
        else:
            names.append(literal)
    if computed:
        for statement in tree.body:
            if isinstance(statement, (ast.Assign, ast.AnnAssign)) and statement.value is not None:
                names += [
                    node.value.partition(":")[0]
                    for node in ast.walk(statement.value)
                    if isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and MODULE_NAME.fullmatch(node.value)
                ]
    return names


def parts_of(names: list[str]) -> set[str]:
    """The parts of toolkit that module names fall in ("toolkit.sweeps.prepare" -> "sweeps")."""
    found: set[str] = set()
    for name in names:
        pieces = name.split(".")
        if pieces[0] == "toolkit" and len(pieces) > 1 and pieces[1] in RANKS:
            found.add(pieces[1])
    return found


def imported_parts(path: Path) -> tuple[set[str], set[str]]:
    """The parts of toolkit a module imports: by `import` statements, and by name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return parts_of(static_imports(tree)), parts_of(by_name_imports(tree))


def above(path: Path, parts: set[str]) -> set[str]:
    """The parts among `parts` that a module may not import: not below its own (a sibling or higher)."""
    here = part(path)
    return {there for there in parts if there != here and RANKS[there] >= RANKS[here]}


MODULES = sorted(p for p in TOOLKIT.rglob("*.py") if "__pycache__" not in p.parts and "_project" not in p.parts)


def test_every_module_belongs_to_a_ranked_part():
    assert {part(p) for p in MODULES} <= set(RANKS), {part(p) for p in MODULES} - set(RANKS)
    top_level = sorted(p.name for p in TOOLKIT.iterdir() if p.suffix == ".py")
    assert len(top_level) <= 8, f"toolkit/ holds a handful of modules and the parts' folders: {top_level}"
    assert {p.name for p in TOOLKIT.iterdir() if p.is_dir() and p.name != "__pycache__"} >= FOLDERS


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(TOOLKIT)))
def test_imports_flow_down(path):
    static, by_name = imported_parts(path)
    known = UPWARD_BY_NAME.get(str(path.relative_to(TOOLKIT)), set())
    wrong = sorted(above(path, static) | (above(path, by_name) - known))
    assert not wrong, f"toolkit/{path.relative_to(TOOLKIT)} ({part(path)}) imports {wrong}, which are not below it"


def test_imports_by_name_are_followed():
    source = """
import importlib
from importlib import import_module

STEPS = ["toolkit.gcp.steps:make"]
LABS = {"x": ("toolkit.labs.local", "LocalLab")}
RUN = ["-m", "toolkit.cli.app"]  # counted too while a computed import is there: the test cannot tell


def load(name, module):
    importlib.import_module("toolkit.tracker.store")
    __import__("toolkit.hosts")
    import_module(f"toolkit.cost.{name}")
    __import__("sys")
    return importlib.import_module(module)
"""
    assert parts_of(by_name_imports(ast.parse(source))) == {"tracker", "hosts", "cost", "gcp", "labs", "cli"}
    without_computed = source.replace("return importlib.import_module(module)", "return module")
    assert parts_of(by_name_imports(ast.parse(without_computed))) == {"tracker", "hosts", "cost"}
    _, prepare = imported_parts(TOOLKIT / "sweeps" / "prepare.py")
    assert {"data", "envs"} <= prepare, "sweeps/prepare.py imports its STEP_FACTORIES (data's, envs') by name"
    _, app = imported_parts(TOOLKIT / "cli" / "app.py")
    assert "cli" in app, 'cli/app.py imports f"toolkit.cli.commands.{module}" by name'


@pytest.mark.parametrize("where", sorted(UPWARD_BY_NAME))
def test_known_upward_imports_by_name_are_still_there(where):
    """An entry of UPWARD_BY_NAME goes when its import does: the list never hides an import that no longer exists."""
    path = TOOLKIT / where
    _, by_name = imported_parts(path)
    assert UPWARD_BY_NAME[where] <= above(path, by_name), f"toolkit/{where} no longer imports all of these by name"


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
