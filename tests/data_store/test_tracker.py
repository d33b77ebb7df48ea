"""`lab data` on the ssh target without a bucket: the tracker keeps the store in /srv/lab/datasets (the lab_tracker
role makes it, the tracker's user's, 0750), and the laptop writes it over the lab's SSH access as that user.

c1 of the session pool is the tracker, configured once by `lab up` of a stack with no workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import LAB

pytestmark = pytest.mark.hosts

USER = "ci"  # the pool's login user: lab:sshUser
STORE = "/srv/lab/datasets"


@dataclass
class Site:
    pool: object
    stack: Path
    home: Path
    tracker: object

    def lab(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LAB_HOME": str(self.home), "COLUMNS": "200"}
        argv = [str(LAB), *args, "--stack", str(self.stack)]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)

    def on(self, command: str) -> subprocess.CompletedProcess[str]:
        return self.pool.ssh(self.tracker, command, check=False, timeout=120)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def site(host_pool, tmp_path_factory) -> Site:
    root = tmp_path_factory.mktemp("datasets")
    tracker = host_pool.hosts()[0]
    stack = root / "Pulumi.datasets.yaml"
    stack.write_text(
        "config:\n"
        "  lab:target: ssh\n"
        f"  lab:trackerHost: {tracker.ip}\n"
        "  lab:workerHosts: []\n"
        f"  lab:sshUser: {USER}\n"
        f"  lab:sshPublicKeyPath: {host_pool.key}.pub\n"
        "  lab:idleMinutes: 0\n"
    )
    made = Site(host_pool, stack, root / "lab-home", tracker)
    made.home.mkdir()
    started = time.monotonic()
    ran = made.lab("up", "--json")
    assert ran.returncode == 0, f"exit {ran.returncode}\n{ran.stdout[-3000:]}\n{ran.stderr[-3000:]}"
    print(f"`lab up` of the tracker: {time.monotonic() - started:.1f} s")
    return made


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    made = tmp_path / "cifar"
    (made / "train").mkdir(parents=True)
    (made / "train" / "big.bin").write_bytes(os.urandom(3_000_000))
    for i in range(50):
        (made / "train" / f"{i:02d}.txt").write_text(f"sample {i}\n")
    (made / "dup.txt").write_text("sample 7\n")  # the same bytes as train/07.txt: one blob
    return made


def test_the_store_is_the_tracker_users_and_no_one_else_may_write_it(site):
    owner = site.on(f"stat -c '%U %G %a' {STORE}")
    assert owner.stdout.strip() == "lab-tracker lab-tracker 750", owner
    other = site.on(f"sudo -n -u nobody touch {STORE}/x")
    assert other.returncode != 0 and "Permission denied" in other.stderr, other


def test_push_ls_rm_on_the_tracker(site, folder):
    started = time.monotonic()
    first = site.lab("data", "push", str(folder), "--name", "cifar", "--json")
    seconds = time.monotonic() - started
    assert first.returncode == 0, first.stderr
    pushed = json.loads(first.stdout)
    print(f"first push of 52 files, {pushed['bytes'] / 1e6:.1f} MB, to the tracker: {seconds:.1f} s")
    assert pushed["store"] == f"tracker:{STORE}"
    assert (pushed["files"], pushed["uploaded_files"], pushed["already_there"]) == (52, 51, False)
    version = pushed["version"]
    big = hashlib.sha256((folder / "train" / "big.bin").read_bytes()).hexdigest()
    there = site.on(
        f"cd {STORE}/cifar && sha256sum blobs/{big} && stat -c '%U %s %n' blobs/* versions/* | sort -u -k1,1"
    )
    assert there.returncode == 0 and there.stdout.startswith(f"{big}  blobs/{big}"), there
    assert {line.split()[0] for line in there.stdout.splitlines()[1:]} == {"lab-tracker"}, there.stdout
    blobs = site.on(f"ls {STORE}/cifar/blobs | wc -l; ls -A {STORE}/cifar")
    assert blobs.stdout.split() == ["51", "blobs", "versions"], blobs.stdout
    manifest = json.loads(site.on(f"cat {STORE}/cifar/versions/{version}.json").stdout)
    assert manifest["name"] == "cifar" and len(manifest["files"]) == 52
    stamps = site.on(f"stat -c '%n %Y' {STORE}/cifar/blobs/*").stdout

    again = site.lab("data", "push", str(folder), "--name", "cifar")
    assert again.returncode == 0 and again.stdout.startswith(f"nothing to upload: cifar@{version}"), again
    (folder / "new.txt").write_text("one more\n")
    more = json.loads(site.lab("data", "push", str(folder), "--name", "cifar", "--version", "v2", "--json").stdout)
    assert (more["uploaded_files"], more["uploaded_bytes"]) == (1, 9)
    assert site.on(f"stat -c '%n %Y' {STORE}/cifar/blobs/*").stdout.count("\n") == stamps.count("\n") + 1

    listed = json.loads(site.lab("data", "ls", "--json").stdout)
    assert listed["store"] == f"tracker:{STORE}"
    assert [(d["name"], [v["version"] for v in d["versions"]]) for d in listed["datasets"]] == [
        ("cifar", ["v2", version])
    ]

    unasked = site.lab("data", "rm", "cifar@v2")
    assert unasked.returncode == 1 and "pass --yes" in unasked.stderr, unasked
    gone = site.lab("data", "rm", "cifar@v2", "--yes")
    assert gone.returncode == 0, gone.stderr
    assert site.on(f"ls {STORE}/cifar/blobs | wc -l; ls {STORE}/cifar/versions").stdout.split() == [
        "51",
        f"{version}.json",
    ]
    unknown = site.lab("data", "rm", "cifar@v2", "--yes")
    assert unknown.returncode == 1 and f"no dataset cifar@v2 in the store (tracker:{STORE})" in unknown.stderr
    assert site.lab("data", "rm", "cifar", "--yes").returncode == 0
    assert site.on(f"ls -A {STORE}").stdout == ""
