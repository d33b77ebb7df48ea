"""Datasets on VM-like ssh workers: c1 the tracker, c2 and c3 the workers, configured by `lab up --target ssh`.

One lab up for the module. `lab data push` puts a dataset in the tracker's store (/srv/lab/datasets); the
tracker serves it read-only to the workers only (lab-datasets.service behind the firewall); `lab:datasets`
puts it on every worker at configure time; a sweep whose space file names it reads identical bytes through
toolkit.data.path on both workers; a file damaged on a worker is fetched again before the next sweep's trials;
a dataset not in the store stops the sweep before its first trial in one line.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import LAB
from tests.data_sync import probe

pytestmark = pytest.mark.hosts

USER = "ci"
CACHE = "/var/cache/lab/datasets"
PORT = 5003  # lab_tracker_datasets_port's default


@dataclass
class Site:
    pool: object
    stack: Path
    home: Path
    tracker: object
    workers: list
    source: Path

    def lab(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LAB_HOME": str(self.home), "COLUMNS": "200"}
        argv = [str(LAB), *args, "--stack", str(self.stack)]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)

    def on(self, host: object, command: str, user: str = "root") -> subprocess.CompletedProcess[str]:
        return self.pool.ssh(host, command, check=False, timeout=120, user=user)  # type: ignore[attr-defined]

    def write_stack(self, datasets: str = "") -> None:
        self.stack.write_text(
            "config:\n"
            "  lab:target: ssh\n"
            f"  lab:trackerHost: {self.tracker.ip}\n"
            f"  lab:workerHosts: [{', '.join(w.ip for w in self.workers)}]\n"
            f"  lab:sshUser: {USER}\n"
            f"  lab:sshPublicKeyPath: {self.pool.key}.pub\n"  # type: ignore[attr-defined]
            "  lab:runsPerGpu: 1\n"
            "  lab:idleMinutes: 0\n" + (f"  lab:datasets: [{datasets}]\n" if datasets else "")
        )

    def up(self) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        ran = self.lab("up", "--json")
        assert ran.returncode == 0, f"exit {ran.returncode}\n{ran.stdout[-3000:]}\n{ran.stderr[-3000:]}"
        print(f"`lab up`: {time.monotonic() - started:.1f} s")
        return ran

    def dispatch(self, space: Path, study: str, out: Path) -> subprocess.CompletedProcess[str]:
        return self.lab(
            "dispatch",
            str(probe.NOTEBOOK),
            "--space",
            str(space),
            "--trials",
            "2",
            "--study",
            study,
            "--no-detach",
            "--json",
            "--output",
            str(out / "{study}/{trial}-{run_id}.ipynb"),
        )

    def worker_digest(self, worker: object, version: str) -> str:
        script = (
            "import hashlib,pathlib,sys;f=pathlib.Path(sys.argv[1]);d=hashlib.sha256()\n"
            "for p in sorted(x for x in f.rglob('*') if x.is_file()):"
            " d.update(p.relative_to(f).as_posix().encode()+b'\\0'+p.read_bytes())\n"
            "print(d.hexdigest())"
        )
        ran = self.on(worker, f'python3 -c "{script}" {CACHE}/toy/{version}')
        assert ran.returncode == 0, ran.stderr
        return ran.stdout.strip()


@pytest.fixture(scope="module")
def site(host_pool, tmp_path_factory) -> Site:
    root = tmp_path_factory.mktemp("datasets")
    tracker, *workers = host_pool.hosts()[:3]
    made = Site(host_pool, root / "Pulumi.data.yaml", root / "lab-home", tracker, workers, root / "toy")
    made.home.mkdir()
    probe.make_dataset(made.source)
    made.write_stack()
    made.up()
    pushed = made.lab("data", "push", str(made.source), "--name", "toy")
    assert pushed.returncode == 0, pushed.stderr
    return made


def version_of(site: Site) -> str:
    listed = site.lab("data", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    document = json.loads(listed.stdout)
    rows = document if isinstance(document, list) else document.get("datasets", [])
    [toy] = [row for row in rows if row["name"] == "toy"]
    versions = toy["versions"]
    return versions[0] if isinstance(versions[0], str) else versions[0]["version"]


def digests_in(out: Path) -> list[str]:
    found = []
    for notebook in out.rglob("*.ipynb"):
        for cell in json.loads(notebook.read_text())["cells"]:
            for output in cell.get("outputs", []):
                text = "".join(output.get("text", ""))
                if "data_digest=" in text:
                    found.append(text.split("data_digest=", 1)[1].split()[0])
    return found


def test_workers_get_the_stacks_datasets_at_configure_time(site):
    site.write_stack("toy")
    site.up()
    version = version_of(site)
    for worker in site.workers:
        assert site.worker_digest(worker, version) == probe.digest(site.source), worker.name
        owner = site.on(worker, f"stat -c %U {CACHE}/toy/{version}")
        assert owner.stdout.strip() == USER
    again = site.on(  # what the role ran, run again: a present, verified copy is not fetched again
        site.workers[0],
        f"/opt/lab/venv/bin/python -m toolkit.data.fetch --store http://{site.tracker.ip}:{PORT} --root {CACHE}"
        " --json toy",
        user=USER,
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)[0]["fetched_files"] == 0


def test_only_the_workers_reach_the_trackers_dataset_server(site):
    worker = site.workers[0]
    url = f"http://{site.tracker.ip}:{PORT}/toy/versions/"
    # only with the stack's token, which the role wrote for the worker's login user (0600)
    mode = site.on(worker, "stat -c '%U %a' /etc/lab/datasets.token")
    assert mode.stdout.split() == [USER, "600"], mode
    ask = (
        "import sys, urllib.error, urllib.request\n"
        "token = open('/etc/lab/datasets.token').read().strip() if sys.argv[1:] else ''\n"
        "headers = {'Authorization': 'Bearer ' + token} if token else {}\n"
        "try:\n"
        f"    print(urllib.request.urlopen(urllib.request.Request('{url}', headers=headers)).status)\n"
        "except urllib.error.HTTPError as refused:\n"
        "    print(refused.code)\n"
    )
    fetched = site.on(worker, f"python3 -c {shlex.quote(ask)} with-token")
    assert fetched.stdout.strip() == "200", fetched.stderr
    anonymous = site.on(worker, f"python3 -c {shlex.quote(ask)}")
    assert anonymous.stdout.strip() == "401", anonymous
    script = (
        "import urllib.error, urllib.request\n"
        "try:\n"
        f"    urllib.request.urlopen(urllib.request.Request('{url}', method='DELETE'))\n"
        "except urllib.error.HTTPError as refused:\n"
        "    print(refused.code)\n"
    )
    refused = site.on(worker, f"python3 -c {shlex.quote(script)}")
    assert refused.stdout.strip() == "501", refused
    with socket.socket() as outsider, pytest.raises(OSError):  # this machine is no worker: the firewall drops it
        outsider.settimeout(3)
        outsider.connect((site.tracker.ip, PORT))


def test_a_sweep_reads_identical_bytes_and_a_damaged_file_is_fetched_again(site, tmp_path):
    version = version_of(site)
    space = probe.space(tmp_path, "toy")
    ran = site.dispatch(space, "reads", tmp_path / "out1")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert digests_in(tmp_path / "out1") == [probe.digest(site.source)] * 2

    victim = f"{CACHE}/toy/{version}/split1/item004.bin"
    damaged = site.on(site.workers[0], f"printf damaged > {victim}", user=USER)
    assert damaged.returncode == 0, damaged.stderr
    ran = site.dispatch(space, "reads-again", tmp_path / "out2")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert digests_in(tmp_path / "out2") == [probe.digest(site.source)] * 2
    assert site.worker_digest(site.workers[0], version) == probe.digest(site.source)


def test_a_dataset_not_in_the_store_stops_the_sweep_before_its_first_trial(site, tmp_path):
    ran = site.dispatch(probe.space(tmp_path, "toy, ghost"), "missing", tmp_path / "out")
    assert ran.returncode == 1
    said = [line for line in ran.stderr.splitlines() if "ghost" in line]
    assert len(said) == 1 and "dataset ghost is not in the store" in said[0], ran.stderr
    assert not list((tmp_path / "out").rglob("*.ipynb"))
