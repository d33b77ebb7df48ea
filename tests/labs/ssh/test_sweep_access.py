"""How detached sweeps reach the workers, on real hosts: c1 the tracker, c2 and c3 the workers (systemd-nspawn
machines with their own IP, sshd and systemd), configured by `lab up --target ssh` with the playbooks.

A sweep runs on the tracker as its user (lab-tracker) and logs in to each worker as the lab's login user, as
`lab dispatch` does from a laptop: with the tracker's own key, checking the worker's host key against the keys
the playbooks pinned (never trusting on first use). The workers accept that key from the tracker's address only,
for commands and stdin (the trial's files go as tar), with no forwarding. A second `lab up` changes none of it;
a new key on the tracker replaces the old one on every worker.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import LAB

pytestmark = pytest.mark.hosts

TRACKER_JSON = "/etc/lab/tracker.json"
USER = "ci"  # the pool's login user: lab:sshUser
MARKER = "lab-tracker@sweeps"  # the stack is named for its file, Pulumi.sweeps.yaml
# The tasks of the roles that set this up; a second `lab up` must change none of them.
TASKS = (
    "Create the tracker's data folders",
    "Make the tracker's SSH key for detached sweeps (once)",
    "Pin the workers' host keys for the tracker's SSH",
    "Install the detached sweeps' unit (lab-sweep@NAME.service)",
    "Write the tracker's description for the toolkit",
    "Write the worker's folders, python3 kernel, login-shell environment and description",
    "Let the tracker's key log in as the login user, from the tracker's address only",
)


@dataclass
class Site:
    pool: object
    stack: Path
    home: Path
    tracker: object
    workers: list

    def lab(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LAB_HOME": str(self.home), "COLUMNS": "200"}
        argv = [str(LAB), args[0], "--stack", str(self.stack), *args[1:]]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)

    def up(self) -> dict:
        started = time.monotonic()
        ran = self.lab("up", "--json")
        assert ran.returncode == 0, f"exit {ran.returncode}\n{ran.stdout[-3000:]}\n{ran.stderr[-3000:]}"
        print(f"`lab up` of 1 tracker + 2 workers: {time.monotonic() - started:.1f} s")
        return json.loads(ran.stdout)

    def on(self, host: object, command: str, *, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.pool.ssh(host, command, check=False, timeout=120, input=input)  # type: ignore[attr-defined]

    def description(self) -> dict:
        ran = self.on(self.tracker, f"cat {TRACKER_JSON}")
        assert ran.returncode == 0, ran.stderr
        return json.loads(ran.stdout)

    def as_tracker(self, worker: object, *command: str, options: tuple[str, ...] = (), input: str | None = None):
        """ssh from the tracker to a worker as the tracker's user, as a detached sweep does."""
        about = self.description()
        argv = ["sudo", "-u", "lab-tracker", "ssh", "-i", about["ssh_key"], "-o", "IdentitiesOnly=yes"]
        argv += ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"]
        argv += [*options, "-o", f"UserKnownHostsFile={about['known_hosts']}", f"{USER}@{worker.ip}", *command]
        return self.on(self.tracker, shlex.join(argv), input=input)

    def tracker_lines(self, worker: object) -> list[str]:
        """The lines of the login user's authorized_keys on a worker that hold the tracker's key."""
        ran = self.on(worker, f"cat ~{USER}/.ssh/authorized_keys")
        assert ran.returncode == 0, ran.stderr
        return [line for line in ran.stdout.splitlines() if line.endswith(" " + MARKER)]


@pytest.fixture(scope="module")
def site(host_pool, tmp_path_factory) -> Site:
    root = tmp_path_factory.mktemp("sweep-access")
    tracker, *workers = host_pool.hosts()[:3]
    stack = root / "Pulumi.sweeps.yaml"
    stack.write_text(
        "config:\n"
        "  lab:target: ssh\n"
        f"  lab:trackerHost: {tracker.ip}\n"
        f"  lab:workerHosts: [{', '.join(w.ip for w in workers)}]\n"
        f"  lab:sshUser: {USER}\n"
        f"  lab:sshPublicKeyPath: {host_pool.key}.pub\n"
        "  lab:runsPerGpu: 1\n"
        "  lab:idleMinutes: 0\n"
    )
    made = Site(host_pool, stack, root / "lab-home", tracker, workers)
    made.home.mkdir()
    made.up()
    return made


def test_the_tracker_describes_the_workers_and_its_key(site):
    about = site.description()
    assert about["workers"] == [
        {"name": f"worker-{number}", "address": worker.ip, "user": USER}
        for number, worker in enumerate(site.workers, start=1)
    ]
    assert about["ssh_key"] == "/srv/lab/home/.ssh/id_ed25519"
    assert about["known_hosts"] == "/srv/lab/home/.ssh/known_hosts"
    owners = site.on(site.tracker, f"stat -c '%U %a %n' {about['ssh_key']} /srv/lab/home/.ssh /srv/lab/sweeps")
    assert owners.stdout.split("\n")[:3] == [
        f"lab-tracker 600 {about['ssh_key']}",
        "lab-tracker 700 /srv/lab/home/.ssh",
        "lab-tracker 750 /srv/lab/sweeps",
    ], owners


def test_the_tracker_logs_in_to_each_worker_checking_its_pinned_host_key(site):
    for worker in site.workers:
        ran = site.as_tracker(worker, "id", "-un")
        assert ran.returncode == 0 and ran.stdout.strip() == USER, (worker.name, ran.stderr)
        # what a slot sends goes over stdin (a tar of the trial's files)
        piped = site.as_tracker(worker, "cat", input="trial files\n")
        assert piped.returncode == 0 and piped.stdout == "trial files\n", (worker.name, piped.stderr)
        # the pinned keys are what lets it in: without them a strict check refuses the worker
        unknown = site.as_tracker(worker, "true", options=("-o", "UserKnownHostsFile=/dev/null"))
        assert unknown.returncode == 255 and "Host key verification failed" in unknown.stderr, unknown


def test_the_key_forwards_nothing(site):
    worker = site.workers[0]
    tunnel = site.as_tracker(worker, options=("-W", "127.0.0.1:22"), input="")
    assert tunnel.returncode == 255 and "prohibited" in tunnel.stderr, tunnel


def test_the_key_is_refused_from_anywhere_but_the_tracker(site):
    """The tracker's key, copied to c2, does not open c3: sshd says the key is right but the address is not."""
    about = site.description()
    key = site.on(site.tracker, f"cat {about['ssh_key']}")
    assert key.returncode == 0 and "PRIVATE KEY" in key.stdout
    thief, target = site.workers
    copied = site.on(thief, "umask 077; cat > /root/tracker-key", input=key.stdout)
    assert copied.returncode == 0, copied.stderr
    since = site.on(target, "date +%s").stdout.strip()
    argv = ["ssh", "-i", "/root/tracker-key", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
    argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", f"{USER}@{target.ip}", "true"]
    try:
        stolen = site.on(thief, shlex.join(argv))
    finally:
        site.on(thief, "rm -f /root/tracker-key")
    assert stolen.returncode == 255 and "Permission denied" in stolen.stderr, stolen
    said = site.on(target, f"journalctl --no-pager -o cat --since @{since} -t sshd")
    # OpenSSH's auth-options.c: "Authentication tried for %s with correct key but not from a permitted host
    # (host=%s, ip=%s, required=%s)."
    refusals = [line for line in said.stdout.splitlines() if "with correct key but not from a permitted host" in line]
    assert any(f"ip={thief.ip}," in line for line in refusals), said.stdout[-2000:]


def fingerprints(site: Site) -> dict[str, str]:
    """What a rerun must leave alone: the key, the pinned host keys, each worker's authorized_keys."""
    about = site.description()
    found = {"tracker": site.on(site.tracker, f"sha256sum {about['ssh_key']} {about['known_hosts']}").stdout}
    for worker in site.workers:
        found[worker.name] = site.on(worker, f"sha256sum ~{USER}/.ssh/authorized_keys").stdout
    return found


def test_a_second_up_changes_nothing_of_it(site):
    before = fingerprints(site)
    document = site.up()
    changed = {name: h["changed_tasks"] for name, h in document["configure"]["hosts"].items()}
    print(f"changed by the second `lab up`: {changed}")
    assert not {task for tasks in changed.values() for task in tasks} & set(TASKS), changed
    assert fingerprints(site) == before
    for worker in site.workers:
        assert len(site.tracker_lines(worker)) == 1


def test_a_new_tracker_key_replaces_the_old_one_on_every_worker(site):
    about = site.description()
    old = site.on(site.tracker, f"cat {about['ssh_key']}.pub").stdout.split()[1]
    removed = site.on(site.tracker, f"rm {about['ssh_key']} {about['ssh_key']}.pub")
    assert removed.returncode == 0, removed.stderr
    document = site.up()
    changed = document["configure"]["hosts"]
    assert "Make the tracker's SSH key for detached sweeps (once)" in changed["tracker"]["changed_tasks"]
    new = site.on(site.tracker, f"cat {about['ssh_key']}.pub").stdout.split()[1]
    assert new != old
    for worker in site.workers:
        (line,) = site.tracker_lines(worker)
        assert line == f'restrict,from="{site.tracker.ip}" ssh-ed25519 {new} {MARKER}'
        assert site.as_tracker(worker, "true").returncode == 0
