"""The lab's helper on a remote tracker: `python -m toolkit.tracker.agent COMMAND`.

The playbooks copy the toolkit package to the tracker and run this module from the tracker's venv, so a
remote tracker backs itself up, restores and serves its Optuna studies with the same code as `lab backup`
on a laptop. It needs only the standard library, plus MLflow (schema upgrades), Optuna (the storage
proxy) and google-cloud-storage (bucket uploads) where those commands are used.

  backup            --data D --keep N --days M [--bucket B] [--stack S] [--reason R] [--json]
  restore-if-empty  --data D [--from DIR] [--replica URL] [--bucket B] [--stack S]
                    only when the tracker has no DB yet: the newest state there is (toolkit.tracker.recovery:
                    the replica, the tracker's backups, DIR, the bucket's newest), else a fresh DB
  restore           --data D --from DIR       keep the current DBs as a backup, then restore DIR
  replica-snapshot  --data D --replica URL [--at TIME] [--stack S]
                    (JSON) the replica's DBs (newest, or as they were at TIME) as a verified backup here
  replicate         --data D --settings FILE [--config FILE]
                    Litestream in the foreground (lab-replica.service), configured from the role's settings,
                    its control socket beside FILE (in the unit's runtime folder, /run/lab-replica)
  replica-catch-up  --data D [--config FILE]
                    (JSON) once writes have stopped (`lab down`): wait until the running Litestream's replica
                    holds each DB's last transaction
  optuna-proxy      --data D --host H --port P
  status            --data D [--replica URL]  (JSON) the DBs, the newest backup, the last restore, the replica

Errors are one line on stderr and exit code 1; `--json` output is one JSON document on stdout.

A tracker without a bucket keeps its artifacts in `<data>/artifacts`, and so its backups carry them: `backup`
without `--bucket` (and the pre-restore backup) adds a tar of that folder when it holds files, and both
restores merge a backup's artifacts back into it. With a bucket, MLflow writes artifacts there (versioned,
kept by `lab down`) and the folder stays empty.

A tracker outside GCP that keeps artifacts and backups in a bucket needs credentials for it (a GCE tracker
has its service account): `/etc/lab/tracker.env`, if there, holds `KEY=VALUE` lines (for example
GOOGLE_APPLICATION_CREDENTIALS=/srv/lab/home/bucket-key.json) that every command gets, however it is run:
from a unit, over SSH, or as the machine stops.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from toolkit.errors import LabError
from toolkit.tracker import backups
from toolkit.tracker import db as tracker_db

TRACKER = "tracker"
BACKUPS = "backups"
ARTIFACTS = "artifacts"
ENV_FILE = Path("/etc/lab/tracker.env")
# Where lab-replica.service has the agent write Litestream's configuration: its RuntimeDirectory, owned by the
# tracker's user (0700), which also holds the control socket and goes away when the unit stops.
REPLICA_CONFIG = "/run/lab-replica/litestream.yml"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _backup(args: argparse.Namespace) -> int:
    data = Path(args.data)
    # With a bucket the artifacts are MLflow's there; without one, this folder is the only copy.
    artifacts = None if args.bucket else data / ARTIFACTS
    made = backups.take(data / TRACKER, data / BACKUPS, stack=args.stack, reason=args.reason, artifacts=artifacts)
    removed = backups.rotate(data / BACKUPS, keep_last=args.keep, keep_days=args.days)
    uploaded = None
    failure = None
    if args.bucket:
        from toolkit.tracker import gcs

        try:
            uploaded = gcs.upload(made, args.bucket, args.stack)
        except LabError as exc:
            failure = exc
    document = {**asdict(made.manifest), "path": str(made.path), "uploaded": uploaded, "rotated": len(removed)}
    if args.json:
        print(json.dumps(document))
    else:
        carried = made.manifest.artifacts
        also = f", {carried.files} artifact files" if carried else ""
        _say(f"backup {made.manifest.id} -> {made.path} ({tracker_db.describe(made.manifest)}{also})")
        if uploaded:
            _say(f"uploaded and verified: {uploaded}")
    if failure is not None:
        raise LabError(f"backup {made.manifest.id} is kept at {made.path}, but {failure.one_line()}")
    return 0


def _verified(folder: str) -> backups.Backup:
    path = Path(folder)
    manifest = backups.verify(path)
    return backups.Backup(path, manifest)


def _restore_if_empty(args: argparse.Namespace) -> int:
    from toolkit.tracker import recovery

    data = Path(args.data)
    if (data / TRACKER / tracker_db.MLFLOW_DB).exists():
        _say(f"the tracker already has its DB in {data / TRACKER}; nothing restored")
        return 0
    candidates = recovery.from_tracker(data / BACKUPS)
    if args.source:
        sent = recovery.from_folder(Path(args.source), "controller", "the controller's backup")
        candidates += [sent] if sent else []
    if args.bucket:
        candidates += recovery.from_bucket(args.bucket, args.stack, data / BACKUPS, _say)
    if args.replica:
        candidates += recovery.from_replica(args.replica, replica_env(), data, args.stack, _say)
    recovery.recover(data, candidates, _say, tracker=TRACKER, artifacts=data / ARTIFACTS)
    return 0


def replica_env() -> dict[str, str]:
    """Litestream's environment on the tracker: the agent's own, with /etc/lab/tracker.env's credentials."""
    return dict(os.environ)


def _replica_snapshot(args: argparse.Namespace) -> int:
    import datetime as dt

    from toolkit.tracker import recovery, replica

    data = Path(args.data)
    try:
        at = dt.datetime.fromisoformat(args.at.replace("Z", "+00:00")) if args.at else None
    except ValueError:
        raise LabError(f"--at {args.at[:40]!r} is not a time (ISO 8601)") from None
    if at is not None and at.tzinfo is None:
        at = at.replace(tzinfo=dt.timezone.utc)
    made = recovery.replica_snapshot(args.replica, replica_env(), data, stack=args.stack, at=at)
    if made is None:
        if at is None or replica.newest(args.replica, replica_env()) is None:
            raise LabError(f"the replica {args.replica} holds no tracker DB")
        raise replica.too_early(args.replica, at, replica_env())
    manifest = backups.verify(made.path)
    print(json.dumps({"id": manifest.id, "path": str(made.path), "created": manifest.created}))
    return 0


def _replicate(args: argparse.Namespace) -> int:
    """Write Litestream's configuration from the role's settings, then become Litestream (signals from systemd
    reach it directly: on SIGTERM it ships what is left, then exits)."""
    from toolkit.tracker import replica

    settings = json.loads(Path(args.settings).read_text())
    if replica.follow(Path(args.data) / TRACKER, str(settings["url"])):
        _say(f"the replica moved to {settings['url']}: it starts there from a snapshot of the tracker's DBs")
    text = replica.config(
        Path(args.data) / TRACKER,
        str(settings["url"]),
        retention_days=int(settings["retention_days"]),
        addr=str(settings["addr"]),
        sync_interval=str(settings.get("sync_interval") or replica.SYNC_INTERVAL),
        socket=replica_socket(Path(args.config)),
    )
    config_file = Path(args.config)
    config_file.write_text(text)
    argv = [replica.binary(), "replicate", "-config", str(config_file)]
    _say(f"replicating {Path(args.data) / TRACKER} to {settings['url']}")
    os.execve(argv[0], argv, replica_env())  # noqa: S606 -- the unit's process becomes Litestream
    return 0  # not reached


def replica_socket(config_file: Path) -> Path:
    """Litestream's control socket: beside its configuration (`replicate` and `replica-catch-up` agree on it)."""
    from toolkit.tracker import replica

    return replica.socket_path(config_file.parent)


def _replica_catch_up(args: argparse.Namespace) -> int:
    """Ask the running Litestream to ship every DB's last transaction and wait until the replica holds it (a
    LabError when it is not running, cannot reach its replica, or stays behind)."""
    from toolkit.tracker import replica

    socket = replica_socket(Path(args.config))
    dbs: dict[str, dict[str, int]] = {}
    for name in replica.DBS:
        db = Path(args.data) / TRACKER / name
        if db.exists():
            done = replica.catch_up(db, socket, replica_env())
            dbs[name] = {"txid": done.txid, "replica_txid": done.replica_txid}
    print(json.dumps({"caught_up": True, "dbs": dbs}))
    return 0


def _restore(args: argparse.Namespace) -> int:
    data = Path(args.data)
    chosen = _verified(args.source)
    if (data / TRACKER / tracker_db.MLFLOW_DB).exists():
        kept = backups.take(
            data / TRACKER, data / BACKUPS, stack=args.stack, reason="pre-restore", artifacts=data / ARTIFACTS
        )
        _say(f"kept the current DBs as backup {kept.manifest.id}")
    tracker_db.install(data / TRACKER, chosen, _say, artifacts_dir=data / ARTIFACTS)
    return 0


def _optuna_proxy(args: argparse.Namespace) -> int:
    import optuna

    db = Path(args.data) / TRACKER / "optuna.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.get_storage(
        optuna.storages.RDBStorage(f"sqlite:///{db}", engine_kwargs={"connect_args": {"timeout": 60}})
    )
    _say(f"serving the Optuna storage {db} on {args.host}:{args.port}")
    optuna.storages.run_grpc_proxy_server(storage, host=args.host, port=args.port)
    return 0


def _status(args: argparse.Namespace) -> int:
    data = Path(args.data)
    dbs = {
        name: (data / TRACKER / name).stat().st_size for name in backups.TRACKER_DBS if (data / TRACKER / name).exists()
    }
    found = backups.listing(data / BACKUPS)
    newest = found[0].manifest if found else None
    from toolkit.tracker import recovery

    document = {
        "dbs": dbs,
        "backups": len(found),
        "newest_backup": {
            "id": newest.id,
            "created": newest.created,
            "artifact_files": newest.artifacts.files if newest.artifacts else 0,
        }
        if newest
        else None,
        "last_restore": recovery.read_record(data),
    }
    if args.replica:
        document["replica"] = _replica_status(args.replica)
    print(json.dumps(document))
    return 0


def _replica_status(url: str) -> dict[str, object]:
    """The replica as `lab status` shows it (replica.state; an error in a field, never a failure)."""
    from toolkit.tracker import replica

    return replica.state(url, replica_env(), Path(REPLICA_CONFIG))


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="python -m toolkit.tracker.agent", description=__doc__.splitlines()[0])
    commands = main.add_subparsers(dest="command", required=True)

    def command(name: str, handler: object) -> argparse.ArgumentParser:
        sub = commands.add_parser(name)
        sub.add_argument("--data", required=True, help="the tracker's data folder (tracker/, backups/)")
        sub.add_argument("--stack", default="lab", help="the stack the tracker belongs to")
        sub.set_defaults(handler=handler)
        return sub

    backup = command("backup", _backup)
    backup.add_argument("--keep", type=int, default=10)
    backup.add_argument("--days", type=int, default=14)
    backup.add_argument("--bucket", default="")
    backup.add_argument("--reason", default="manual")
    backup.add_argument("--json", action="store_true")
    if_empty = command("restore-if-empty", _restore_if_empty)
    if_empty.add_argument("--from", dest="source", default="", help="a backup folder the controller sent")
    if_empty.add_argument("--replica", default="", help="the replica's URL")
    if_empty.add_argument("--bucket", default="", help="the bucket holding the stack's backups")
    command("restore", _restore).add_argument("--from", dest="source", required=True, help="a backup folder")
    snapshot = command("replica-snapshot", _replica_snapshot)
    snapshot.add_argument("--replica", required=True, help="the replica's URL")
    snapshot.add_argument("--at", default="", help="a moment (ISO 8601, UTC when it has no zone)")
    replicate = command("replicate", _replicate)
    replicate.add_argument("--settings", required=True, help="the role's replica settings (JSON: url, ...)")
    replicate.add_argument("--config", default=REPLICA_CONFIG, help="where Litestream's configuration is written")
    catch_up = command("replica-catch-up", _replica_catch_up)
    catch_up.add_argument("--config", default=REPLICA_CONFIG, help="the running Litestream's configuration")
    proxy = command("optuna-proxy", _optuna_proxy)
    proxy.add_argument("--host", default="127.0.0.1")
    proxy.add_argument("--port", type=int, default=5001)
    command("status", _status).add_argument("--replica", default="", help="the replica's URL, to show its state")
    return main


def load_environment(path: Path = ENV_FILE) -> None:
    """`KEY=VALUE` lines of the tracker's environment file, under what the caller's environment already says."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            os.environ.setdefault(key.strip(), value.strip().strip("'\""))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    load_environment()
    try:
        return int(args.handler(args))
    except LabError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
