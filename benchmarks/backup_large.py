"""`lab backup` of a 1 GB tracker DB under concurrent writes, against `sqlite3 SRC ".backup DST"`.

`lab backup` = snapshot + PRAGMA quick_check + sha256 + manifest (+ the CLI's start-up); the sqlite3 CLI does
the snapshot alone. The full PRAGMA integrity_check (12x the quick one in a run on 2 cores) runs when a backup
is restored, not when it is taken: the phases line shows both. Both commands run on the same DB, in the same run,
alternating, while an MLflow client logs metrics to the running tracker. Target (issue 14): `lab backup`
within 1.5x; the last line prints the ratios.

Run: .venv/bin/python benchmarks/backup_large.py [--gb 1.0] [--rounds 3]
Needs the sqlite3 CLI (apt-get install sqlite3) and lab[local]. Uses a temporary LAB_HOME.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

LAB = Path(sys.executable).with_name("lab")
TARGET = 1.5  # lab backup / sqlite3 .backup


def build_db(path: Path, gigabytes: float) -> None:
    """An MLflow-schema DB grown to size with metric rows, as a long-lived tracker's would be."""
    subprocess.run(
        [sys.executable, "-m", "mlflow", "db", "upgrade", f"sqlite:///{path}"], check=True, capture_output=True
    )
    db = sqlite3.connect(path)
    db.execute(
        "INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage) "
        "VALUES (1, 'bench', '/tmp/bench', 'active')"
    )
    run_cols = (
        "run_uuid, name, source_type, source_name, entry_point_name, user_id, status, start_time, "
        "end_time, source_version, lifecycle_stage, artifact_uri, experiment_id"
    )
    batch, target = 200_000, int(gigabytes * 2**30)
    run = 0
    while path.stat().st_size < target:
        run += 1
        run_id = f"{run:032x}"
        db.execute(
            f"INSERT INTO runs ({run_cols}) VALUES (?, 'r', 'LOCAL', '', '', 'b', 'FINISHED', 0, 0, '', "
            "'active', '/tmp', 1)",
            (run_id,),
        )
        db.executemany(
            "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?, ?, ?, ?, ?, 0)",
            ((f"metric_{i % 50}", i * 0.001, 1_700_000_000_000 + i, run_id, i) for i in range(batch)),
        )
        db.commit()
    db.close()


def writer(uri: str, stop: threading.Event, counter: list[int]) -> None:
    import mlflow

    client = mlflow.MlflowClient(uri)
    run_id = client.create_run("1").info.run_id
    step = 0
    while not stop.is_set():
        client.log_metric(run_id, "live", step * 0.5, step=step)
        step += 1
        counter[0] = step


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env=env, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {done.stderr.strip()}")
    return time.perf_counter() - start


def cli_backup(db: Path, copy: Path, env: dict[str, str], limit: float) -> float | None:
    """`sqlite3 SRC .backup DST`: seconds, or None when it did not finish within `limit`. It copies 100
    pages a step and starts over whenever another connection writes; on a busy lock it gives up, and is
    run again, as a user would."""
    start = time.perf_counter()
    while (left := limit - (time.perf_counter() - start)) > 0:
        try:
            done = subprocess.run(
                ["sqlite3", "-cmd", ".timeout 60000", str(db), f".backup '{copy}'"],
                capture_output=True,
                env=env,
                timeout=left,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return None
        if done.returncode == 0:
            return time.perf_counter() - start
    return None


def compare(db: Path, home: Path, env: dict[str, str], rounds: int, label: str, limit: float) -> float | None:
    """Both backups `rounds` times, alternating; the ratio of the medians (None when sqlite3 never finished)."""
    lab_times, cli_times = [], []
    for round_ in range(rounds):
        copy = home / f"cli-{round_}.db"
        cli_times.append(cli_backup(db, copy, env, limit))
        copy.unlink(missing_ok=True)
        lab_times.append(timed([str(LAB), "backup", "--local"], env))
    lab_median = statistics.median(lab_times)
    lab_text = f"median {lab_median:6.2f} s  {[round(t, 2) for t in lab_times]}"
    finished = [t for t in cli_times if t is not None]
    if not finished:
        print(f"[{label}] sqlite3 .backup (snapshot only)       did not finish within {limit:g} s ({rounds} tries)")
        print(f"[{label}] lab backup (snapshot+quick_check+sha) {lab_text}")
        return None
    cli_median = statistics.median(finished)
    shown = [round(t, 2) if t is not None else f">{limit:g}" for t in cli_times]
    print(f"[{label}] sqlite3 .backup (snapshot only)       median {cli_median:6.2f} s  {shown}")
    print(f"[{label}] lab backup (snapshot+quick_check+sha) {lab_text}")
    ratio = lab_median / cli_median
    print(f"[{label}] ratio lab/sqlite3: {ratio:.2f}x (target <= {TARGET}x: {'met' if ratio <= TARGET else 'NOT met'})")
    return ratio


def phases(db: Path, home: Path) -> None:
    """Where `lab backup`'s time goes, phase by phase, on the same DB."""
    from toolkit.tracker import backups

    copy = home / "phases.db"
    start = time.perf_counter()
    backups.snapshot(db, copy)
    snap = time.perf_counter() - start
    conn = backups._open_for_check(copy)
    start = time.perf_counter()
    conn.execute("PRAGMA integrity_check").fetchall()
    check = time.perf_counter() - start
    start = time.perf_counter()
    conn.execute("PRAGMA quick_check").fetchall()
    quick = time.perf_counter() - start
    conn.close()
    start = time.perf_counter()
    backups.sha256_of(copy)
    digest = time.perf_counter() - start
    copy.unlink()
    print(
        f"phases: snapshot {snap:.2f} s, quick_check {quick:.2f} s and sha256 {digest:.2f} s (side by side: a "
        f"backup taken); integrity_check {check:.2f} s (a backup restored)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("sqlite3") is None:
        print("needs the sqlite3 CLI: apt-get install sqlite3", file=sys.stderr)
        return 1
    home = Path(tempfile.mkdtemp(prefix="lab-bench-"))
    env = {**os.environ, "LAB_HOME": str(home), "LAB_STACK": "bench"}
    tracker = home / "stacks" / "bench" / "tracker"
    tracker.mkdir(parents=True)
    db = tracker / "mlflow.db"
    port = "5917"
    try:
        started = time.perf_counter()
        build_db(db, args.gb)
        print(f"built {db.stat().st_size / 2**30:.2f} GiB tracker DB in {time.perf_counter() - started:.0f} s")
        subprocess.run(
            [str(LAB), "up", "--local", "--no-jupyter", "--port", port], check=True, env=env, capture_output=True
        )
        phases(db, home)
        ratios = {"quiet": compare(db, home, env, args.rounds, "quiet", limit=300)}
        stop, counter = threading.Event(), [0]
        thread = threading.Thread(target=writer, args=(f"http://127.0.0.1:{port}", stop, counter), daemon=True)
        thread.start()
        time.sleep(2)
        before = counter[0]
        time.sleep(2)
        print(f"concurrent writer: ~{(counter[0] - before) / 2:.0f} metric writes/s through the MLflow server")
        ratios["under writes"] = compare(db, home, env, args.rounds, "under writes", limit=120)
        stop.set()
        thread.join(timeout=30)
        shown = ", ".join(f"{k} {v:.2f}x" if v is not None else f"{k} n/a" for k, v in ratios.items())
        size = db.stat().st_size / 2**30
        print(f"lab backup / sqlite3 .backup of a {size:.2f} GiB tracker: {shown} (target <= {TARGET}x)")
    finally:
        subprocess.run([str(LAB), "down", "--local", "--force"], env=env, capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
