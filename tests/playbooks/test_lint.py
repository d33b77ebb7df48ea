"""The playbooks pass ansible-lint (production profile) and yamllint, and every role variable is documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = ROOT / "playbooks"
ROLES = sorted(p for p in (PLAYBOOKS / "roles").iterdir() if p.is_dir())
BIN = Path(sys.executable).parent
VARIABLE = re.compile(r"\blab_[a-z0-9_]+\b")


def run_linter(*argv: str) -> subprocess.CompletedProcess[str]:
    tool = BIN / argv[0]
    if not tool.exists():
        pytest.fail(f"{argv[0]} is not installed in {BIN}: pip install -e '.[test]'")
    env = {**os.environ, "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]), "NO_COLOR": "1"}
    return subprocess.run(
        [str(tool), *argv[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_ansible_lint_production_profile_is_clean():
    done = run_linter("ansible-lint", "--offline", "--profile", "production", "playbooks/")
    assert done.returncode == 0, f"ansible-lint exit {done.returncode}\n{done.stdout}\n{done.stderr}"


def test_yamllint_is_clean():
    done = run_linter("yamllint", "--strict", "playbooks/", ".yamllint", ".ansible-lint")
    assert done.returncode == 0, f"yamllint exit {done.returncode}\n{done.stdout}\n{done.stderr}"


def defaults_of(role: Path) -> dict[str, object]:
    return yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}


def defined_in_tasks(node: object) -> set[str]:
    """Names a role's tasks define for themselves: `register:`, `set_fact` keys, task and block `vars:`."""
    found: set[str] = set()
    if isinstance(node, list):
        for item in node:
            found |= defined_in_tasks(item)
    elif isinstance(node, dict):
        if isinstance(node.get("register"), str):
            found.add(node["register"])
        for key in ("ansible.builtin.set_fact", "vars"):
            if isinstance(node.get(key), dict):
                found |= set(node[key])
        for value in node.values():
            found |= defined_in_tasks(value)
    return found


def role_files(role: Path) -> list[Path]:
    return [p for sub in ("tasks", "handlers", "templates", "defaults") for p in sorted((role / sub).glob("*"))]


def known_names() -> dict[str, set[str]]:
    """Per role: its defaults and the names its tasks and handlers define."""
    known = {}
    for role in ROLES:
        names = set(defaults_of(role))
        for sub in ("tasks", "handlers"):
            for path in sorted((role / sub).glob("*.yml")):
                names |= defined_in_tasks(yaml.safe_load(path.read_text()))
        known[role.name] = names
    return known


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_every_default_is_prefixed_and_has_a_comment_above_it(role):
    lines = (role / "defaults" / "main.yml").read_text().splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*):", line)
        if not match:
            continue
        name = match.group(1)
        assert name.startswith(f"{role.name}_"), f"{role.name}/defaults/main.yml: {name} lacks the role's prefix"
        assert number > 0 and lines[number - 1].startswith("#"), (
            f"{role.name}/defaults/main.yml:{number + 1}: {name} has no comment line above it"
        )


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_every_role_variable_used_is_defined(role):
    known = known_names()
    prefixes = {f"{name}_": name for name in known}
    missing = []
    for path in role_files(role):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if path.suffix == ".yml" and line.lstrip().startswith("#"):
                continue  # YAML comments; in templates a '#' line is still rendered
            for name in VARIABLE.findall(line):
                owner = next((r for prefix, r in prefixes.items() if name.startswith(prefix)), None)
                if owner is not None and name not in known[owner]:
                    missing.append(f"{path.relative_to(PLAYBOOKS)}:{number}: {name} (not in {owner}'s defaults)")
    assert not missing, "\n".join(missing)
