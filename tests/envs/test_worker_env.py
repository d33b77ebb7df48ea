"""Experiments' environments on a VM-like ssh worker: c1 the tracker, c2 the worker, configured by `lab up`.

One lab up for the module. A sweep whose notebook's folder holds a requirements.txt runs its trials on the worker in
the environment the worker installed with uv (/var/lib/lab/envs/<hash>, the login user's, its kernel in the user's
Jupyter folder), the runs tagged lab.env; a second sweep finds it there and installs nothing.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import LAB
from tests.envs import probe

pytestmark = pytest.mark.hosts

USER = "ci"
ENVS = "/var/lib/lab/envs"


@dataclass
class Site:
    pool: object
    stack: Path
    home: Path
    tracker: object
    worker: object

    def lab(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LAB_HOME": str(self.home), "COLUMNS": "200"}
        argv = [str(LAB), args[0], "--stack", str(self.stack), *args[1:]]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)

    def on(self, host: object, command: str, user: str = "root") -> subprocess.CompletedProcess[str]:
        return self.pool.ssh(host, command, check=False, timeout=120, user=user)  # type: ignore[attr-defined]

    def dispatch(self, notebook: Path, study: str, out: Path) -> subprocess.CompletedProcess[str]:
        return self.lab(
            "dispatch",
            str(notebook),
            "--space",
            str(probe.space(notebook.parent)),
            "--trials",
            "2",
            "--study",
            study,
            "--no-detach",
            "--json",
            "--output",
            str(out / "{study}/{trial}-{run_id}.ipynb"),
        )

    def tags(self, run_id: str) -> dict[str, str]:
        """A run's tags, read on the tracker from its MLflow (only the tracker and the workers reach it)."""
        script = (
            "import json, sys, mlflow; uri = json.load(open('/etc/lab/tracker.json'))['mlflow_url'];"
            " print(json.dumps(mlflow.MlflowClient(uri).get_run(sys.argv[1]).data.tags))"
        )
        ran = self.on(self.tracker, f"/opt/lab/venv/bin/python -c {shlex.quote(script)} {run_id}")
        assert ran.returncode == 0, ran.stderr
        return json.loads(ran.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def site(host_pool, tmp_path_factory) -> Site:
    root = tmp_path_factory.mktemp("envs")
    tracker, worker = host_pool.hosts()[:2]
    made = Site(host_pool, root / "Pulumi.envs.yaml", root / "lab-home", tracker, worker)
    made.home.mkdir()
    made.stack.write_text(
        "config:\n"
        "  lab:target: ssh\n"
        f"  lab:trackerHost: {tracker.ip}\n"
        f"  lab:workerHosts: [{worker.ip}]\n"
        f"  lab:sshUser: {USER}\n"
        f"  lab:sshPublicKeyPath: {host_pool.key}.pub\n"
        "  lab:idleMinutes: 0\n"
    )
    ran = made.lab("up", "--json")
    assert ran.returncode == 0, f"exit {ran.returncode}\n{ran.stdout[-3000:]}\n{ran.stderr[-3000:]}"
    return made


def test_the_worker_installs_the_environment_once_and_a_second_sweep_finds_it(site, tmp_path):
    notebook = probe.notebook(tmp_path / "exp")
    ran = site.dispatch(notebook, "env-on-worker", tmp_path / "out")
    assert ran.returncode == 0, f"{ran.stdout[-2000:]}\n{ran.stderr[-2000:]}"
    seen = probe.printed(tmp_path / "out")
    assert len(seen) == 2, seen
    digests = {Path(s["env_python"]).parents[2].name for s in seen}
    assert len(digests) == 1, seen
    [digest] = digests
    for printed in seen:
        assert printed["env_python"] == f"{ENVS}/{digest}/venv/bin/python"
        assert printed["termcolor"] == "2.4.0"
        assert site.tags(printed["run"])["lab.env"] == digest

    marker = f"{ENVS}/{digest}/lab-env.json"
    made = site.on(site.worker, f"stat -c %U {marker} && cat {marker}")
    assert made.returncode == 0, made.stderr
    owner, document = made.stdout.split("\n", 1)
    assert owner == USER
    kernel = site.on(site.worker, f"cat ~/.local/share/jupyter/kernels/lab-env-{digest[:12]}/kernel.json", user=USER)
    assert json.loads(kernel.stdout)["argv"][0] == f"{ENVS}/{digest}/venv/bin/python"

    ran = site.dispatch(notebook, "env-on-worker-again", tmp_path / "again")
    assert ran.returncode == 0, f"{ran.stdout[-2000:]}\n{ran.stderr[-2000:]}"
    again = site.on(site.worker, f"cat {marker}")
    assert json.loads(again.stdout)["made"] == json.loads(document)["made"]  # found, not installed again
    assert {s["env_python"] for s in probe.printed(tmp_path / "again")} == {f"{ENVS}/{digest}/venv/bin/python"}
