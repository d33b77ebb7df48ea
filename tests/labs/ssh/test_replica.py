"""The continuous replica of a remote tracker, on a real one: a VM-like host (systemd-nspawn, sshd, systemd)
configured by `lab up --target ssh` with the playbooks, so Litestream runs as lab-replica.service beside MLflow.

The crash test: runs are logged through MLflow (over an SSH forward, as `lab tunnel` does) while the tracker host
is powered off hard mid-stream, after 30 acknowledged runs (every process in it SIGKILLed at once: no unit stops, no
final backup, no last sync), its DB deleted while it is off, and the host booted again. MLflow must not start on an
empty DB at boot, and `lab up` must bring back the replica's state: no run acknowledged >= 1 s before the crash may be
missing. Then `lab restore --at` undoes a run. `lab down` stops MLflow and the Optuna proxy first, lets the replica
catch up, then takes its backup: one that fails starts them again, and one under writes keeps every run MLflow
acknowledged, in the backup and in the replica alike.

Without a bucket the replica is a folder on the tracker (file:///srv/lab/replica): it outlives a lost DB (the
host's disk does), not a lost host.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import LAB, free_port, wait_past
from tests.hosts.vmhosts import SSH_OPTIONS
from toolkit.errors import EXIT_BACKUP_FAILED

pytestmark = pytest.mark.hosts
WRITES_BEFORE_CRASH = 30  # runs acknowledged before the tracker's power is cut (each a run and a metric)

mlflow = pytest.importorskip("mlflow")

REPLICA = "file:///srv/lab/replica"
RUNS_QUERY = (
    "SELECT runs.name FROM runs JOIN experiments USING (experiment_id) WHERE experiments.name = ?"
    " ORDER BY runs.start_time"
)
RUN_NAMES = f"""
import sqlite3, sys
with sqlite3.connect(sys.argv[1]) as conn:
    print("\\n".join(row[0] for row in conn.execute({RUNS_QUERY!r}, (sys.argv[2],))))
"""
# The replica's newest state, restored on the tracker by Litestream as `lab up` restores it, into sys.argv[2]; prints
# when Litestream dated the replica's newest file (to the second: `litestream ltx` prints no fraction).
RESTORE_NEWEST = """
import sys
from pathlib import Path
from toolkit.tracker import replica
out = Path(sys.argv[2])
for leftover in (out, out.with_name(out.name + "-wal"), out.with_name(out.name + "-shm")):
    leftover.unlink(missing_ok=True)
replica.restore(sys.argv[1], "mlflow.db", out, {})
newest = replica.newest(sys.argv[1], {})
print(newest.at.isoformat() if newest else "")
"""
RESTORED = "/tmp/lab-test-replica.db"
# The promise (docs/durability.md): a run acknowledged a second before the crash survives it. Litestream on the
# tracker looks and ships every 250 ms (toolkit.tracker.replica.SYNC_INTERVAL).
SURVIVES_AFTER_S = 1.0


@dataclass
class Site:
    pool: object
    host: object
    stack: Path
    home: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "LAB_HOME": str(self.home), "COLUMNS": "200"}

    def lab(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        argv = [str(LAB), args[0], "--stack", str(self.stack), *args[1:]]
        return subprocess.run(argv, env=self.env(), capture_output=True, text=True, timeout=timeout, check=False)

    def on(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.pool.ssh(self.host, command, check=False, timeout=timeout)  # type: ignore[attr-defined]

    def json_of(self, *args: str) -> dict:
        ran = self.lab(*args, "--json")
        assert ran.returncode == 0, f"exit {ran.returncode}\n{ran.stdout}\n{ran.stderr[-3000:]}"
        return json.loads(ran.stdout)

    def run_names(self, experiment: str, db: str = "/srv/lab/tracker/mlflow.db") -> list[str]:
        """The runs of one experiment in an MLflow DB on the tracker (its own, unless told), oldest first."""
        ran = self.pool.ssh(self.host, "python3", "-", db, experiment, input=RUN_NAMES, check=False)  # type: ignore[attr-defined]
        assert ran.returncode == 0, ran.stderr
        return ran.stdout.splitlines()

    def replica(self) -> dict:
        return self.json_of("status")["replica"]

    def wait_for_runs(self, experiment: str, runs: list[str], timeout: float = 60) -> dt.datetime:
        """Until the replica's newest state holds exactly `runs` in `experiment` (a newer transaction alone does not
        say which write reached it: Litestream writes to the DB too); then when its newest file was dated."""
        deadline = time.monotonic() + timeout
        while True:
            ran = self.pool.ssh(
                self.host, "/opt/lab/venv/bin/python", "-", REPLICA, RESTORED, input=RESTORE_NEWEST, check=False
            )  # type: ignore[attr-defined]
            assert ran.returncode == 0, ran.stderr[-2000:]
            found = self.run_names(experiment, db=RESTORED)
            if found == runs:
                return dt.datetime.fromisoformat(ran.stdout.strip())
            assert time.monotonic() < deadline, f"the replica never held the runs {runs} within {timeout} s: {found}"
            time.sleep(0.5)

    def wait_for_replica(self, after: int | None = None, timeout: float = 60) -> int:
        """The replica's newest transaction, once there is one (newer than `after` when given)."""
        deadline = time.monotonic() + timeout
        while True:
            replica = self.replica()
            if replica["newest_txid"] is not None and (after is None or replica["newest_txid"] > after):
                return replica["newest_txid"]
            assert time.monotonic() < deadline, f"the replica did not catch up: {replica}"
            time.sleep(1)


@pytest.fixture(scope="module")
def site(host_pool, tracker_host, tmp_path_factory) -> Site:
    """c1 as the tracker of a lab without workers or bucket, up."""
    root = tmp_path_factory.mktemp("replica")
    stack = root / "Pulumi.rep.yaml"
    stack.write_text(
        "config:\n"
        "  lab:target: ssh\n"
        f"  lab:trackerHost: {tracker_host.ip}\n"
        "  lab:sshUser: ci\n"
        f"  lab:sshPublicKeyPath: {host_pool.key}.pub\n"
    )
    made = Site(host_pool, tracker_host, stack, root / "lab-home")
    made.home.mkdir()
    started = time.monotonic()
    document = made.json_of("up")
    print(f"`lab up` of a tracker: {time.monotonic() - started:.1f} s")
    assert document["replica"] == {"url": REPLICA, "running": True}, document["replica"]
    return made


@contextlib.contextmanager
def mlflow_client(site: Site) -> Iterator[object]:
    """An MLflow client on this machine, through an SSH forward to the tracker's MLflow (this machine is not a
    worker: the firewall keeps it away from MLflow's port). Requests fail at once when the tracker is gone."""
    port = free_port()
    host = site.host
    tunnel = f"127.0.0.1:{port}:{host.ip}:5000"  # type: ignore[attr-defined]
    forward = subprocess.Popen(
        [
            "ssh",
            *SSH_OPTIONS,
            "-i",
            str(host.key),
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            tunnel,
            f"ci@{host.ip}",
        ],  # type: ignore[attr-defined]
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    saved = {name: os.environ.get(name) for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"})
    try:
        client = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            try:
                client.search_experiments()
                break
            except Exception:
                assert forward.poll() is None, "the SSH forward closed"
                assert time.monotonic() < deadline, "MLflow did not answer through the forward"
                time.sleep(0.5)
        yield client
    finally:
        forward.terminate()
        forward.wait(timeout=10)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def test_status_shows_the_replica_running_and_the_units_wired(site):
    status = site.json_of("status")
    assert status["hosts"]["tracker"]["services"]["lab-replica.service"] == "active"
    replica = status["replica"]
    assert replica["url"] == REPLICA and replica["running"] is True
    assert set(replica) >= {"newest_txid", "newest_at", "age_s", "local_txid", "behind_txids", "lag_s"}
    # How far behind the tracker's own DB it is, as Litestream on the tracker has it: caught up once it ships.
    deadline = time.monotonic() + 60
    while (replica := site.json_of("status")["replica"])["behind_txids"] != 0:
        assert time.monotonic() < deadline, f"the replica did not catch up with the tracker: {replica}"
        time.sleep(1)
    assert replica["local_txid"] == replica["newest_txid"] and replica["lag_s"] == 0.0, replica
    shown = site.lab("status")
    assert "; caught up" in shown.stdout + shown.stderr
    # MLflow does not need its replica: stopping Litestream leaves MLflow serving.
    assert site.on("systemctl stop lab-replica.service").returncode == 0
    assert site.on("systemctl is-active lab-mlflow.service").stdout.strip() == "active"
    assert site.json_of("status")["replica"]["running"] is False
    assert site.on("systemctl start lab-replica.service").returncode == 0
    assert site.json_of("up")["replica"]["running"] is True


def test_a_tracker_powered_off_hard_comes_back_from_the_replica(site):
    made = site.json_of("backup")  # an older state here: the replica must be preferred, being newer
    confirmed: list[tuple[str, float]] = []  # (run name, when this machine had the server's answer)
    with mlflow_client(site) as client:
        experiment = client.create_experiment("crash")  # type: ignore[attr-defined]
        stop = threading.Event()

        def write() -> None:
            n = 0
            while not stop.is_set():
                try:
                    run = client.create_run(experiment, run_name=f"run-{n}")  # type: ignore[attr-defined]
                    client.log_metric(run.info.run_id, "loss", 1.0 / (n + 1))  # type: ignore[attr-defined]
                except Exception:
                    return  # the tracker is gone
                confirmed.append((f"run-{n}", time.monotonic()))
                n += 1

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        # The crash comes mid-stream: once the writer has had WRITES_BEFORE_CRASH runs acknowledged (a state to
        # wait for, not a fixed pause; the writer goes on writing until the power is cut).
        deadline = time.monotonic() + 120
        while len(confirmed) < WRITES_BEFORE_CRASH:
            assert writer.is_alive() and time.monotonic() < deadline, f"only {len(confirmed)} writes acknowledged"
            time.sleep(0.1)
        crashed_at = time.monotonic()
        site.pool.power_off_hard(site.host)  # type: ignore[attr-defined]
        stop.set()
        writer.join(timeout=60)
    tracker_dir = site.pool.run_dir / site.host.name / "root" / "srv/lab/tracker"  # type: ignore[attr-defined]
    for name in ("mlflow.db", "mlflow.db-wal", "mlflow.db-shm", "mlflow.db-journal"):
        (tracker_dir / name).unlink(missing_ok=True)  # the disk lost the DB while the host was off
    subprocess.run(["rm", "-rf", str(tracker_dir / ".mlflow.db-litestream")], check=True)

    site.pool.up(1)  # type: ignore[attr-defined]
    # At boot MLflow and the replica wait for `lab up`: an empty DB would become the replica's newest state.
    for unit in ("lab-mlflow.service", "lab-optuna.service", "lab-replica.service"):
        assert site.on(f"systemctl is-active {unit}").stdout.strip() == "inactive", unit
    assert site.on("test -e /srv/lab/tracker/mlflow.db").returncode != 0

    started = time.monotonic()
    ran = site.lab("up", "--json")
    took = time.monotonic() - started
    assert ran.returncode == 0, ran.stderr[-3000:]
    document = json.loads(ran.stdout)
    restored = document["restored"]
    assert restored["source"] == "replica" and restored["label"].startswith(f"the replica {REPLICA}"), restored
    assert restored["backup"] != made["id"]
    survivors = set(site.run_names("crash"))
    must_survive = [name for name, at in confirmed if at < crashed_at - SURVIVES_AFTER_S]
    assert len(must_survive) >= 5, f"the writer was too slow to test anything: {len(confirmed)} runs"
    lost = [name for name in must_survive if name not in survivors]
    assert not lost, f"{len(lost)} of {len(must_survive)} acknowledged runs were lost: {lost[:5]}"
    last_ok = max((at for name, at in confirmed if name in survivors), default=crashed_at)
    print(
        f"crash: {len(confirmed)} runs acknowledged, {len(survivors)} restored; the newest restored run was "
        f"acknowledged {crashed_at - last_ok:.1f} s before the crash; `lab up` restored it in {took:.1f} s"
    )
    assert document["replica"]["running"] is True
    site.wait_for_replica()


def test_restore_at_a_moment_undoes_what_came_after(site):
    with mlflow_client(site) as client:
        experiment = client.create_experiment("pit")  # type: ignore[attr-defined]
        client.create_run(experiment, run_name="A")  # type: ignore[attr-defined]
        a_dated = site.wait_for_runs("pit", ["A"])
        # `lab restore --at T` restores the replica's files dated before T, in whole seconds. The first whole second
        # after A's file is the earliest T that keeps A; B, written once the clock (the hosts share this machine's)
        # has passed T, is dated after it.
        moment = a_dated.replace(microsecond=0) + dt.timedelta(seconds=1)
        wait_past(moment)
        client.create_run(experiment, run_name="B")  # type: ignore[attr-defined]  # the mistake to undo
        site.wait_for_runs("pit", ["A", "B"])
    assert site.run_names("pit") == ["A", "B"]

    refused = site.lab("restore", "--at", moment.isoformat())
    assert refused.returncode == 1 and "the tracker is running" in refused.stderr and "--stop" in refused.stderr
    early = site.lab("restore", "--at", "2000-01-01T00:00:00Z", "--stop")
    assert early.returncode == 1 and "holds nothing as early as 2000-01-01" in early.stderr
    assert site.on("systemctl is-active lab-mlflow.service").stdout.strip() == "active", "a refusal stops nothing"

    ran = site.lab("restore", "--at", moment.isoformat(), "--stop")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert site.run_names("pit") == ["A"]
    for unit in ("lab-mlflow.service", "lab-optuna.service", "lab-replica.service"):
        assert site.on(f"systemctl is-active {unit}").stdout.strip() == "active", f"{unit} not started again"
    # What it replaced is kept as a backup on the tracker: not even the mistake is lost.
    reasons = site.on("cat /srv/lab/backups/*/manifest.json").stdout
    assert '"reason": "pre-restore"' in reasons


def test_a_down_whose_backup_fails_leaves_mlflow_and_the_proxy_serving(site):
    # `lab down` stops MLflow and the Optuna proxy before its backup; a backup that fails starts them again.
    assert site.on("chmod 0500 /srv/lab/backups").returncode == 0  # the tracker cannot write its backups
    try:
        ran = site.lab("down")
    finally:
        site.on("chmod 0750 /srv/lab/backups")
    assert ran.returncode == EXIT_BACKUP_FAILED, ran.stderr[-3000:]
    assert "the backup failed, so nothing was stopped (MLflow and the Optuna proxy are running again)" in ran.stderr, (
        ran.stderr[-3000:]
    )
    assert "MLflow and the Optuna proxy stopped taking writes" in ran.stdout + ran.stderr
    for unit in ("lab-mlflow.service", "lab-optuna.service", "lab-replica.service"):
        assert site.on(f"systemctl is-active {unit}").stdout.strip() == "active", f"{unit} is not running"
    with mlflow_client(site) as client:  # and MLflow takes writes again
        client.create_run(client.create_experiment("after-a-failed-down"))  # type: ignore[attr-defined]


def names_in(db: Path, experiment: str) -> list[str]:
    """The runs of one experiment in an MLflow DB on this machine."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return [row[0] for row in conn.execute(RUNS_QUERY, (experiment,))]


def test_down_keeps_every_write_mlflow_acknowledged_and_the_replica_catches_up(site):
    # A writer logs runs through MLflow until `lab down` returns. Down stops MLflow and the Optuna proxy first,
    # lets the replica catch up, then takes its backup: every run MLflow acknowledged is in that backup, and the
    # replica holds the same last transaction. (Taken while MLflow still ran, the backup would miss the runs
    # acknowledged between it and the stop.)
    acknowledged: list[str] = []
    refused: list[float] = []
    with mlflow_client(site) as client:
        experiment = client.create_experiment("until-down")  # type: ignore[attr-defined]
        stop = threading.Event()

        def write() -> None:
            n = 0
            while not stop.is_set():
                try:
                    client.create_run(experiment, run_name=f"run-{n}")  # type: ignore[attr-defined]
                except Exception:
                    refused.append(time.monotonic())  # MLflow stopped taking writes: not acknowledged
                    time.sleep(0.1)
                    continue
                acknowledged.append(f"run-{n}")
                n += 1

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 10:  # `down` comes while writes are streaming in
            assert writer.is_alive() and time.monotonic() < deadline, f"only {len(acknowledged)} writes acknowledged"
            time.sleep(0.1)
        started = time.monotonic()
        ran = site.lab("down", "--json")
        took = time.monotonic() - started
        stop.set()
        writer.join(timeout=60)
    assert ran.returncode == 0, f"exit {ran.returncode}\n{ran.stdout}\n{ran.stderr[-3000:]}"
    down = json.loads(ran.stdout)
    assert len(acknowledged) >= 5 and refused, f"{len(acknowledged)} runs, {len(refused)} refusals: nothing tested"
    kept = names_in(Path(down["backup"], "mlflow.db"), "until-down")
    missing = [name for name in acknowledged if name not in kept]
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged runs are not in the backup: {missing[:5]}"
    assert down["replica_caught_up"] is True, ran.stderr[-3000:]
    assert "replica caught up with mlflow.db" in ran.stderr
    for unit in ("lab-mlflow.service", "lab-optuna.service", "lab-replica.service"):
        assert site.on(f"systemctl is-active {unit}").stdout.strip() != "active", unit

    # The replica holds what the backup holds: the same runs, up to the last one acknowledged.
    restored = site.on(
        "rm -f /tmp/replica-check.db* && "
        f"/opt/lab/venv/bin/litestream restore -o /tmp/replica-check.db {REPLICA}/mlflow.db"
    )
    assert restored.returncode == 0, restored.stderr
    assert site.run_names("until-down", "/tmp/replica-check.db") == kept
    manifest = json.loads(Path(down["backup"], "manifest.json").read_text())
    runs = next(f for f in manifest["files"] if f["name"] == "mlflow.db")["counts"]["runs"]
    counted = site.on(
        "python3 -c \"import sqlite3; print(sqlite3.connect('/tmp/replica-check.db')"
        ".execute('SELECT count(*) FROM runs').fetchone()[0])\""
    )
    assert int(counted.stdout.strip()) == runs, "the replica should hold what the final backup holds"
    print(f"`lab down` under writes: {len(acknowledged)} runs acknowledged, all kept; down took {took:.1f} s")
