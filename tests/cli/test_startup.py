"""`lab --help` and the light commands stay instant: no heavy SDK is imported on their way."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = (
    "mlflow",
    "pulumi",
    "pulumi_gcp",
    "papermill",
    "optuna",
    "google.cloud",
    "ansible",
    "ansible_runner",
    "boto3",
    "sqlalchemy",
)

PROBE = """
import json, sys
from toolkit.cli.app import main
code = main(sys.argv[1:])
heavy = sorted(m for m in sys.modules if m.split('.')[0] in {heavy} or m.startswith('google.cloud'))
print(json.dumps({{"code": code, "heavy": heavy}}), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["config", "--help"],
        ["config", "show", "--help"],
        ["config", "validate", "--help"],
        ["doctor", "--help"],
        ["config", "show"],
        ["config", "validate"],
        ["config", "show", "--json"],
        *([name, "--help"] for name in ("up", "status", "backup", "restore", "down", "dispatch", "sweeps", "init")),
        ["sweep", "show", "--help"],
        ["schedule", "--help"],
        *(["schedule", name, "--help"] for name in ("down", "list", "remove")),
    ],
    ids=" ".join,
)
def test_no_heavy_imports(args):
    heavy_roots = {m.split(".")[0] for m in HEAVY if m != "google.cloud"}
    script = PROBE.format(heavy=sorted(heavy_roots))
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=False)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["code"] == 0, done.stderr
    assert report["heavy"] == [], f"`lab {' '.join(args)}` imported {report['heavy']}"


LOADED = """
import json, sys
from toolkit.cli.app import main
main(sys.argv[1:])
print(json.dumps(sorted(m for m in sys.modules if m.startswith("toolkit."))), file=sys.stderr)
"""


def toolkit_modules(*args: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", LOADED, *args], capture_output=True, text=True, check=False)
    return json.loads(done.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [["--help"], ["--version"], []], ids=lambda a: " ".join(a) or "no arguments")
def test_help_and_version_load_only_the_skeleton(args):
    loaded = toolkit_modules(*args)
    assert not [m for m in loaded if m.startswith("toolkit.cli.commands.")], loaded
    assert not [m for m in loaded if m.split(".")[1] in {"labs", "gcp", "sweeps", "tracker", "hosts", "cost"}]


def test_a_command_loads_its_own_module_and_no_other_command():
    loaded = toolkit_modules("up", "--help")
    assert [m for m in loaded if m.startswith("toolkit.cli.commands.")] == ["toolkit.cli.commands.up"]
    loaded = toolkit_modules("config", "validate", "--help")
    assert sorted(m for m in loaded if m.startswith("toolkit.cli.commands.")) == [
        "toolkit.cli.commands.config_show",
        "toolkit.cli.commands.config_validate",
    ], "a group loads its own commands"


def test_the_help_listed_without_importing_is_each_commands_own():
    import inspect

    from toolkit.cli import app

    for entry in app.COMMANDS.values():
        targets = [entry] if isinstance(entry, str) else list(entry[1].values())
        for target in targets:
            assert app.docstring(target) == inspect.getdoc(app.load(target)), target
            assert app.docstring(target), f"{target} has no docstring"
