"""The modules a notebook imports, read from its code cells without running them, and a check that an environment
has them (`missing`, run with the environment's Python before a sweep's first trial).

Only what a code cell imports at its top level counts (`import x.y`, `from x import y`: the top-level module `x`):
an import inside a function, an `if` or a `try` may be optional. IPython's magics and shell lines (`%pip ...`,
`!ls`, `x = !ls`) are set aside before the cell is parsed; a cell magic (`%%bash`) is not Python. Modules the
notebook's folder holds (a `helper.py` or a package folder beside it) travel with the sweep and are left out, as
are relative imports and `__future__`.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

# A line IPython rewrites before Python sees it: a line magic or a shell escape, alone or assigned.
_MAGIC = re.compile(r"^(\s*)(?:[A-Za-z_][\w, ]*=\s*)?[%!]")


def of_notebook(notebook: Path) -> tuple[str, ...]:
    """The top-level modules `notebook`'s code cells import at their top level, sorted, less those beside it."""
    document = json.loads(notebook.read_text(encoding="utf-8"))
    found: set[str] = set()
    for cell in document.get("cells", []):
        if cell.get("cell_type") == "code":
            source = cell.get("source", "")
            found |= of_cell("".join(source) if isinstance(source, list) else str(source))
    return tuple(sorted(name for name in found if not _beside(notebook.parent, name)))


def of_cell(source: str) -> set[str]:
    """The top-level modules one cell imports at its top level (none when it is a cell magic or not Python)."""
    if source.lstrip().startswith("%%"):
        return set()
    lines = [_MAGIC.sub(lambda m: m.group(1) + "pass  # ", line, count=1) for line in source.splitlines()]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return set()  # not Python this check can read (the trial says what is wrong with it)
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    names.discard("__future__")
    return names


def _beside(folder: Path, name: str) -> bool:
    """Whether `name` is a module in the notebook's folder (a .py file, a package or namespace folder, an
    extension module)."""
    return (folder / f"{name}.py").is_file() or (folder / name).is_dir() or any(folder.glob(f"{name}.*.so"))


# Run with the environment's Python (`python -c PROBE name ...`): one JSON line, {"missing": [...], "failed":
# {name: error}}. A module is missing when Python cannot find it; one that is found is imported, and fails when
# importing it raises (a package of the environment that does not fit one of the lab's kernel, say).
PROBE = """
import importlib, importlib.util, json, sys
missing, failed = [], {}
for name in sys.argv[1:]:
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        missing.append(name)
        continue
    try:
        importlib.import_module(name)
    except BaseException as error:
        text = (str(error).strip().splitlines() or [""])[0]
        failed[name] = (type(error).__name__ + ": " + text)[:300]
print(json.dumps({"missing": missing, "failed": failed}))
"""
