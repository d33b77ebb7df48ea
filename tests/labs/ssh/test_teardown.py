"""Teardown and trust on a real tracker: the gcp `lab down` with and without SSH, and the ssh target's promises.

The gcp teardown (toolkit.labs.gcp.teardown) destroys the workers first, then backs the tracker up over SSH; a
`lab down` that cannot SSH (a scheduled one on a CI runner outside lab:allowedSshCidrs) stops the tracker VM
instead and waits for the backup the tracker takes of itself as it stops (lab-final-backup.service) to reach
the bucket, where it is downloaded and verified before the rest goes.

Real here: a VM-like tracker (systemd-nspawn, sshd, systemd) configured by `lab up --target ssh` with the
playbooks and holding runs in MLflow; SSH (and SSH refusing a key that is not the lab's); the tracker agent
uploading to gcp-storage-emulator, which stands in for the lab's bucket and which the tracker reaches over the
hosts' bridge as a GCE tracker reaches GCS (its address in /etc/lab/tracker.env, where a tracker outside GCP
keeps its bucket credentials); the tracker's own shutdown; lab's teardown flow, download and verification.
Stand-ins: the Pulumi engine (a recorder of destroys, rewriting the state as Pulumi does) and the Compute
API's stop (`systemctl poweroff` inside the host, which is what a GCE stop's ACPI shutdown starts; the API call
itself is tested against GCP's answers in tests/gcp/test_gcp_api.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import LAB, free_port
from tests.gcp.pulumi_fakes import gcp_settings, write_checkpoint
from toolkit.errors import EXIT_BACKUP_FAILED, LabError
from toolkit.gcp import pulumi_state
from toolkit.labs import gcp as gcp_lab
from toolkit.labs import ssh as remote_lab

pytestmark = pytest.mark.hosts

BUCKET = "lab-teardown-test"
RUNS = 7
RESOURCES = [
    ("gcp:compute/instance:Instance", "tracker"),
    ("gcp:compute/instance:Instance", "worker-0"),
    ("gcp:compute/disk:Disk", "tracker-data"),
]


class RecordingEngine:
    """Pulumi's destroy as it rewrites the state: targets removed (the stack's outputs kept), or everything."""

    def __init__(self, backend: Path) -> None:
        self.backend = backend
        self.calls: list[str] = []

    def destroy(self, say, targets: list[str] | None = None) -> None:
        state = pulumi_state.read(f"file://{self.backend}", "dev")
        assert state is not None
        if targets:
            self.calls.append("destroy workers")
            kept = [(r.type, r.name) for r in state.cloud_resources if r.urn not in targets]
            write_checkpoint(self.backend, "dev", state.outputs, kept)
        else:
            self.calls.append("destroy")
            write_checkpoint(self.backend, "dev", {}, [])


@dataclass
class Tracker:
    pool: object
    host: object
    stack: Path
    home: Path
    bucket_url: str

    def env(self) -> dict[str, str]:
        return {**os.environ, "LAB_HOME": str(self.home), "COLUMNS": "200", "STORAGE_EMULATOR_HOST": self.bucket_url}

    def lab(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        argv = [str(LAB), args[0], "--stack", str(self.stack), *args[1:]]  # before a `--` that ends the options
        return subprocess.run(argv, env=self.env(), capture_output=True, text=True, timeout=timeout, check=False)

    def on(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.pool.ssh(self.host, command, check=False, timeout=timeout)  # type: ignore[attr-defined]

    def runs(self, experiment: str, count: int) -> None:
        logged = self.on(
            "/opt/lab/venv/bin/python -c \"import mlflow; c = mlflow.MlflowClient('http://"
            f"{self.host.ip}:5000'); e = c.create_experiment('{experiment}'); "  # type: ignore[attr-defined]
            f'[c.set_terminated(c.create_run(e).info.run_id) for _ in range({count})]"',
            timeout=180,
        )
        assert logged.returncode == 0, logged.stderr


@pytest.fixture(scope="module")
def tracker(host_pool, tracker_host, tmp_path_factory) -> Iterator[Tracker]:
    """c1 as a lab's tracker whose bucket is gcp-storage-emulator on the bridge, holding RUNS runs."""
    from google.cloud import storage

    root = tmp_path_factory.mktemp("teardown")
    address, port = f"{host_pool.net}.1", free_port()
    emulator = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("gcp-storage-emulator")),
            *("start", "--host", address, "--port", str(port), "--in-memory"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://{address}:{port}"
    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = url
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                storage.Client(project="my-gcp-project").create_bucket(BUCKET)
                break
            except Exception:
                assert time.monotonic() < deadline and emulator.poll() is None, "the emulator did not start"
                time.sleep(0.3)
        stack = root / "Pulumi.dev.yaml"  # stack `dev`, as the gcp settings of the teardown
        stack.write_text(
            "config:\n"
            "  lab:target: ssh\n"
            f"  lab:trackerHost: {tracker_host.ip}\n"
            "  lab:sshUser: ci\n"
            f"  lab:sshPublicKeyPath: {host_pool.key}.pub\n"
            f"  lab:bucketName: {BUCKET}\n"
        )
        made = Tracker(host_pool, tracker_host, stack, root / "lab-home", url)
        made.home.mkdir()
        # The tracker's bucket credentials, where a tracker outside GCP keeps them (the agent, and so the replica
        # in the bucket, reads them).
        wrote = made.on(f"mkdir -p /etc/lab && printf 'STORAGE_EMULATOR_HOST={url}\\n' > /etc/lab/tracker.env")
        assert wrote.returncode == 0, wrote.stderr
        up = made.lab("up", "--json")
        assert up.returncode == 0, up.stderr[-3000:]
        replica = json.loads(up.stdout)["replica"]
        assert replica == {"url": f"gs://{BUCKET}/replica/dev", "running": True}, up.stdout[-2000:]
        made.runs("before-down", RUNS)
        yield made
    finally:
        if saved is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = saved
        if not host_pool.is_running(tracker_host):
            host_pool.up(len(host_pool.hosts()))
        host_pool.ssh(tracker_host, "rm -f /etc/lab/tracker.env", check=False)
        emulator.terminate()
        emulator.wait(timeout=10)


def runs_in(backup: Path, experiment: str = "before-down") -> int:
    """The runs of one experiment in a backup's MLflow DB (the tracker may hold others from earlier tests)."""
    with sqlite3.connect(backup / "mlflow.db") as db:
        return db.execute(
            "select count(*) from runs join experiments using (experiment_id) where experiments.name = ?",
            (experiment,),
        ).fetchone()[0]


def gcp_teardown(site: Tracker, lab: remote_lab.SshLab, monkeypatch, **options) -> tuple:
    """gcp_lab.teardown of a gcp stack whose Pulumi state names this tracker, its backup taken through `lab`."""
    monkeypatch.setenv("LAB_HOME", str(site.home))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", site.bucket_url)
    backend = site.home / "pulumi"
    outputs = {"tracker_external_ip": site.host.ip, "bucket_name": BUCKET, "tracker_name": "lab-dev-tracker"}
    write_checkpoint(backend, "dev", outputs, RESOURCES)
    engine = RecordingEngine(backend)
    said: list[str] = []

    def backup(outputs):  # as gcp's `lab down` has it: writes stop, the replica catches up, then the backup
        made, _ = remote_lab.down_backup(lab, say=said.append, restart=not options.get("force"))
        return made.path

    started = time.monotonic()
    done = gcp_lab.teardown(
        gcp_settings(**{"lab:bucketName": BUCKET}), lambda: engine, backup=backup, say=said.append, **options
    )
    return done, engine.calls, said, time.monotonic() - started


def test_gcp_down_backs_the_tracker_up_over_ssh_after_the_workers_are_gone(tracker, monkeypatch):
    monkeypatch.setenv("LAB_HOME", str(tracker.home))
    lab = remote_lab.open_lab(str(tracker.stack), "ssh")
    try:
        done, calls, said, took = gcp_teardown(tracker, lab, monkeypatch)
    finally:  # the recording engine destroyed no VM: the tracker serves again for the tests that follow
        tracker.on("systemctl start lab-mlflow.service lab-optuna.service")
    assert calls == ["destroy workers", "destroy"], said
    assert done.backup_by == "ssh" and runs_in(done.backup) == RUNS
    # Writes stop, then the replica (the bucket's) catches up or says why not, then the backup is taken.
    stopped = said.index("MLflow and the Optuna proxy stopped taking writes on tracker")
    replica = next(i for i, line in enumerate(said) if "caught up with" in line or "did not catch up" in line)
    backed_up = next(i for i, line in enumerate(said) if line.endswith("downloaded and verified"))
    assert stopped < replica < backed_up, said
    print(f"gcp down with SSH: {took:.1f} s to a verified backup; {said[replica]}")


def test_ssh_down_whose_backup_fails_stops_nothing_and_exits_4(tracker):
    assert tracker.on("chmod 0500 /srv/lab/backups").returncode == 0  # the tracker cannot write its backups
    try:
        ran = tracker.lab("down")
        assert ran.returncode == EXIT_BACKUP_FAILED, ran.stderr
        assert "the backup failed, so nothing was stopped (MLflow and the Optuna proxy are running again)" in ran.stderr
        for unit in ("lab-mlflow.service", "lab-optuna.service"):
            assert tracker.on(f"systemctl is-active {unit}").stdout.strip() == "active", unit
    finally:
        tracker.on("chmod 0750 /srv/lab/backups")


def test_gcp_down_whose_backup_fails_keeps_the_tracker_serving(tracker, monkeypatch):
    # MLflow and the Optuna proxy stop taking writes before the backup; it fails, so they start again and only
    # the workers (which hold nothing) are gone.
    monkeypatch.setenv("LAB_HOME", str(tracker.home))
    lab = remote_lab.open_lab(str(tracker.stack), "ssh")
    assert tracker.on("chmod 0500 /srv/lab/backups").returncode == 0
    try:
        with pytest.raises(LabError) as raised:
            gcp_teardown(tracker, lab, monkeypatch)
    finally:
        tracker.on("chmod 0750 /srv/lab/backups")
    assert raised.value.code == EXIT_BACKUP_FAILED
    assert "the tracker was not destroyed" in raised.value.message
    assert "(MLflow and the Optuna proxy are running again)" in raised.value.message
    state = pulumi_state.read(f"file://{tracker.home / 'pulumi'}", "dev")
    assert state is not None and sorted(r.name for r in state.cloud_resources) == ["tracker", "tracker-data"]
    for unit in ("lab-mlflow.service", "lab-optuna.service", "lab-replica.service"):
        assert tracker.on(f"systemctl is-active {unit}").stdout.strip() == "active", unit


def test_ssh_restore_puts_back_what_the_backup_held(tracker):
    made = tracker.lab("backup", "--json")
    assert made.returncode == 0, made.stderr
    backup_id = json.loads(made.stdout)["id"]
    tracker.runs("after-the-backup", 2)
    restored = tracker.lab("restore", backup_id, "--stop")
    assert restored.returncode == 0, restored.stderr
    count = tracker.on(
        "/opt/lab/venv/bin/python -c \"import mlflow; c = mlflow.MlflowClient('http://"
        f"{tracker.host.ip}:5000'); print(c.get_experiment_by_name('after-the-backup'))\"",
        timeout=120,
    )
    assert count.returncode == 0, count.stderr
    assert count.stdout.strip().splitlines()[-1] == "None", "the runs logged after the backup are gone again"


def test_lab_ssh_runs_a_command_on_a_host(tracker):
    ran = tracker.lab("ssh", "tracker", "--", "cat", "/etc/hostname")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "c1"


def test_gcp_down_that_cannot_ssh_ends_with_the_trackers_own_verified_backup(tracker, tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_HOME", str(tracker.home))
    lab = remote_lab.open_lab(str(tracker.stack), "ssh")
    refused = tmp_path / "refused"  # the machine running `lab down` is not let in: its key is not the lab's
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(refused)], check=True)
    outsider = dataclasses.replace(lab, access=dataclasses.replace(lab.access, key=refused))
    # Another machine shares no SSH connection with the ones `lab up` opened here.
    monkeypatch.setattr(tempfile, "tempdir", tempfile.mkdtemp(prefix="outsider-", dir="/tmp"))
    pool, host = tracker.pool, tracker.host

    def stop_tracker(outputs):  # GCE's stop: an ACPI shutdown, then systemd stops every unit
        pool.ssh(host, "systemctl --no-block poweroff", check=False, timeout=30)  # type: ignore[attr-defined]
        assert pool.wait_stopped(host, timeout=240), pool.console_tail(host)  # type: ignore[attr-defined]

    done, calls, said, took = gcp_teardown(tracker, outsider, monkeypatch, stop_tracker=stop_tracker)
    assert calls == ["destroy workers", "destroy"], said
    refusal = next(line for line in said if "asking the tracker to back itself up as it stops" in line)
    assert refusal.startswith(f"cannot reach tracker ({host.ip}) over SSH"), refusal  # type: ignore[attr-defined]
    assert done.backup_by == "tracker"
    assert runs_in(done.backup) == RUNS, "every run logged before the down"
    print(f"gcp down without SSH: {took:.1f} s to a verified final backup")
