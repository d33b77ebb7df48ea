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
