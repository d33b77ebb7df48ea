"""The docs cover every command, option and configuration key; the README stays a landing page whose links hold.

docs/commands.md has a section per command (a heading `lab CMD` in backticks) naming each of its options and
arguments; docs/configuration.md has a table row per key of toolkit/config/schema.py with its default, and
Pulumi.yaml documents the same keys. The README's own commands are run by tests/test_readme.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main

from toolkit.cli.app import ALL, build
from toolkit.config import schema

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PROJECT = (ROOT / "Pulumi.yaml").read_text(encoding="utf-8")
DOCS = ROOT / "docs"
COMMANDS_PAGE = (DOCS / "commands.md").read_text(encoding="utf-8")
CONFIG_PAGE = (DOCS / "configuration.md").read_text(encoding="utf-8")
README_MAX_BYTES = 14 * 1024
# The reference pages issue 13 asks for, besides docs/architecture.md.
PAGES = ("commands", "configuration", "ssh-target", "gcp", "durability", "security", "notebook-contract", "costs")

ROOT_COMMAND = typer.main.get_command(build(ALL))


def is_group(command: object) -> bool:
    return hasattr(command, "commands")  # typer's own click (typer._click) makes its groups and commands


def commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found = []
    for name, command in group.commands.items():
        path = (*prefix, name)
        found.append((path, command))
        if is_group(command):
            found.extend(commands(command, path))
    return found


ALL_COMMANDS = commands(ROOT_COMMAND)
# Commands that run (groups only hold them).
LEAVES = [(path, command) for path, command in ALL_COMMANDS if not is_group(command)]
OPTIONS = [
    (path, flag)
    for path, command in LEAVES
    for param in command.params
    if param.param_type_name == "option"
    for flag in (*param.opts, *param.secondary_opts)
]
ARGUMENTS = [
    (path, (param.metavar or param.name).strip("[].").upper())
    for path, command in LEAVES
    for param in command.params
    if param.param_type_name == "argument"
]


def name(value: object) -> str:
    return " ".join(value) if isinstance(value, tuple) else str(value)


def section(page: str, title: str) -> str | None:
    """A page's section under the heading that reads `title` (in backticks), up to the next heading of its
    level or above; None when there is no such heading."""
    heading = re.search(rf"^(#+) `{re.escape(title)}`\s*$", page, re.MULTILINE)
    if heading is None:
        return None
    level = len(heading.group(1))
    rest = page[heading.end() :]
    following = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: following.start()] if following else rest


def mentions_flag(text: str, flag: str) -> bool:
    """`--flag` or `--flag VALUE` as a code span (so `--port` is not found inside `--ports` or `--mlflow-port`)."""
    return re.search(rf"`{re.escape(flag)}(?:[ =][^`]*)?`", text) is not None


def test_there_are_commands():
    assert {name(p) for p, _ in ALL_COMMANDS} >= {"config", "config show", "config validate", "doctor", "up", "down"}


@pytest.mark.parametrize(("path", "command"), ALL_COMMANDS, ids=name)
def test_every_command_has_help(path, command):
    assert (command.help or "").strip(), f"lab {name(path)} has no help text"


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=name)
def test_every_command_has_a_section_in_the_commands_page(path, command):
    assert section(COMMANDS_PAGE, f"lab {name(path)}") is not None, (
        f"docs/commands.md has no section for `lab {name(path)}` (a heading such as ### `lab {name(path)}`)"
    )


@pytest.mark.parametrize(("path", "flag"), OPTIONS, ids=name)
def test_every_option_is_in_its_commands_section(path, flag):
    text = section(COMMANDS_PAGE, f"lab {name(path)}") or ""
    assert mentions_flag(text, flag), f"docs/commands.md: the section of `lab {name(path)}` does not document {flag}"


@pytest.mark.parametrize(("path", "argument"), ARGUMENTS, ids=name)
def test_every_argument_is_in_its_commands_section(path, argument):
    text = section(COMMANDS_PAGE, f"lab {name(path)}") or ""
    assert re.search(rf"\b{argument}\b", text), f"docs/commands.md: `lab {name(path)}` does not mention {argument}"


@pytest.mark.parametrize(
    "flag", [f for p in ROOT_COMMAND.params for f in (*p.opts, *p.secondary_opts)] + ["--help", "-h"]
)
def test_every_option_of_lab_itself_is_documented(flag):
    assert mentions_flag(COMMANDS_PAGE, flag), f"docs/commands.md does not document `lab {flag}`"


def documented_default(key: schema.Key) -> str:
    """A key's default as the docs write it (Pulumi.yaml's comments and docs/configuration.md's table)."""
    if key.required_for:
        return f"required for {', '.join(key.required_for)}"
    if key.derived:
        return key.derived
    if isinstance(key.default, bool):
        return str(key.default).lower()
    if key.default is None:
        return "none"
    if key.default == ():
        return "[]"
    return str(key.default)


@pytest.mark.parametrize("key", schema.KEYS, ids=lambda k: k.name)
def test_every_key_is_in_the_configuration_page(key):
    row = re.search(rf"^\| `{re.escape(key.name)}` \|(.*)\|(.*)\|\s*$", CONFIG_PAGE, re.MULTILINE)
    assert row, f"docs/configuration.md has no table row for {key.name}"
    meaning, default = row.group(1).strip(), row.group(2).strip().replace("`", "")
    assert meaning, f"docs/configuration.md: {key.name} has no meaning"
    if key.name == "lab:workerImage":  # documented by its family: the full image path is long
        assert key.default.rsplit("/", 1)[-1] in default
    else:
        assert default == documented_default(key), f"docs/configuration.md: {key.name}'s default"


@pytest.mark.parametrize("key", schema.KEYS, ids=lambda k: k.name)
def test_every_key_is_documented_in_pulumi_yaml(key):
    line = re.search(rf"^#\s+{re.escape(key.name)} \((\w+), ([^)]*)\): (.+)$", PROJECT, re.MULTILINE)
    assert line, f"Pulumi.yaml does not document {key.name}"
    kind, default = line.group(1), line.group(2)
    assert kind == key.kind
    if key.name != "lab:workerImage":  # documented by name: the full image path is long
        assert default == documented_default(key)


def test_pulumi_project_file():
    assert re.search(r"^name: lab$", PROJECT, re.MULTILINE)
    assert re.search(r"^runtime: python$", PROJECT, re.MULTILINE)
    assert re.search(r"^main: infra/$", PROJECT, re.MULTILINE)


def test_the_readme_is_a_landing_page():
    size = len(README.encode("utf-8"))
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes, over {README_MAX_BYTES}: the reference goes to docs/"


def test_the_readme_links_every_docs_page():
    linked = set(re.findall(r"\]\((docs/[^)#\s]+)", README))
    pages = {f"docs/{path.name}" for path in DOCS.glob("*.md")}
    assert {f"docs/{page}.md" for page in PAGES} <= pages, "a reference page is missing from docs/"
    assert pages <= linked, f"the README does not link {sorted(pages - linked)}"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    return {slug(title) for title in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


@pytest.mark.parametrize("page", [ROOT / "README.md", *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_links_between_the_pages_hold(page):
    text = page.read_text(encoding="utf-8")
    broken = []
    for target, anchor in re.findall(r"\]\(([^)#\s]*\.md)?(?:#([^)\s]+))?\)", text):
        if not target and not anchor:
            continue
        linked = (page.parent / target).resolve() if target else page
        if not linked.is_file():
            broken.append(f"{target} (no such file)")
        elif anchor and anchor not in anchors(linked):
            broken.append(f"{target}#{anchor} (no such heading)")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {', '.join(broken)}"


def test_what_dispatch_writes_in_the_checkout_is_ignored():
    """`lab dispatch` keeps executed notebooks under out/ (its default --output, from the quickstart's folder too):
    git leaves them out."""
    from toolkit.cli.commands.dispatch import DEFAULT_OUTPUT

    assert DEFAULT_OUTPUT.startswith("out/")
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "out/" in ignored
