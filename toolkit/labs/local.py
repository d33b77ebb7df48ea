"""The local target: the tracker side of the lab as processes on this machine.

Layout of a stack's state folder, `$LAB_HOME/stacks/<stack>/`:
  tracker/    mlflow.db (and optuna.db): the lab's memory
  artifacts/  MLflow's proxied artifacts, when no bucket is configured
  backups/    verified snapshots of tracker/, rotated
  run/        one record per running service (pid, port, URL)
  logs/       each service's log
  secrets/    the Jupyter token and JupyterLab's config that reads it (0600, in a 0700 folder)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from toolkit import environment
from toolkit.config import paths, schema, stack
from toolkit.console import age
from toolkit.envs.spec import stack_requirements
from toolkit.errors import EXIT_BACKUP_FAILED, LabError
from toolkit.labs.base import (
    DownRequest,
    Lab,
    Report,
    RestoreRequest,
    Table,
    UpRequest,
    backup_failed,
    keeps_its_data,
)
from toolkit.sweeps.place import SweepPlace
from toolkit.tracker import backups, services
from toolkit.tracker import dashboard as optuna_dashboard
from toolkit.tracker import db as tracker_db

MLFLOW = "mlflow"
JUPYTER = "jupyter"
REPLICA = "replica"  # Litestream, replicating the tracker's DBs while MLflow runs
DASHBOARD = "optuna-dashboard"  # the sweeps' live view, over the lab's optuna.db
GUARD = "budget-guard"  # stops the lab when lab:budgetUsd or lab:maxHours is reached (toolkit.budget.guard)
DASHBOARD_READY_TIMEOUT_S = 120.0  # as MLflow: a laptop busy with other work (or CI) can be slow to start it
REPLICA_READY_TIMEOUT_S = 30.0
REPLICA_LOG_TAIL_BYTES = 64 << 10
DEFAULT_JUPYTER_PORT = 8888
HOST = "127.0.0.1"
MLFLOW_READY_TIMEOUT_S = 120.0
JUPYTER_READY_TIMEOUT_S = 90.0
ARTIFACTS_PREFIX = "mlflow-artifacts"

Say = Callable[[str], None]
PROGRESS_FROM_BYTES = 64 << 20  # a backup of a tracker this big shows a progress bar

if TYPE_CHECKING:
    from toolkit.console import Ui
    from toolkit.labs.prerequisites import Check
    from toolkit.sweeps.hosting import SweepHost


class UploadFailed(LabError):
    """The backup is safe on this machine; only its copy in the bucket failed."""

    def __init__(self, backup: backups.Backup, reason: LabError) -> None:
        self.backup = backup
        super().__init__(
            f"backup {backup.manifest.id} is kept at {backup.path}, but {reason.one_line()}",
            hint="check the bucket and run `lab backup` again",
        )


@dataclass(frozen=True)
class LocalLab(Lab):
    """One stack's local lab: where its state lives and what its settings say; the `Lab` of the local target."""

    target: ClassVar[str] = "local"
    settings: schema.Settings
    root: Path
    bucket: str | None  # only when the stack file names one (lab:bucketName)

    # -- the `Lab` interface (the work is in the functions below) ----------------------------------------------
    @classmethod
    def open(cls, stack_name: str, ui: Ui | None = None) -> LocalLab:
        return open_lab(stack_name)

    @classmethod
    def prerequisites(
        cls, public_key_path: str, project: str | None, settings: schema.Settings | None = None
    ) -> list[Check]:
        return _prerequisites(public_key_path, project)

    @classmethod
    def next_steps(cls, flag: str) -> str:
        return f"next: lab up{flag}"

    def up(self, request: UpRequest, ui: Ui) -> Report:
        return _preview_up(self, request) if request.preview else _lab_up(self, request, ui)

    def status(self, ui: Ui) -> Report:
        return _lab_status(self, ui)

    def backup(self, ui: Ui) -> Report:
        return _lab_backup(self, ui)

    def restore(self, request: RestoreRequest, ui: Ui) -> Report:
        return _lab_restore(self, request, ui)

    def down(self, request: DownRequest, ui: Ui) -> Report:
        return _lab_down(self, request, ui)

    def sweep_place(
        self, exits: contextlib.ExitStack, parallel: int | None, gpus: list[str] | None, ui: Ui
    ) -> SweepPlace:
        return _lab_sweep_place(self, parallel, gpus, ui)

    def sweep_host(self) -> SweepHost:
        from toolkit.sweeps.hosting import LocalSweeps

        return LocalSweeps(self.root)

    def detached_place(self, parallel: int | None, gpus: list[str] | None) -> dict[str, Any]:
        return _detached_place(self, parallel, gpus)

    def study_storage(self) -> contextlib.AbstractContextManager[Any]:
        return _study_storage(self)

    @property
    def tracker_dir(self) -> Path:
        return self.root / "tracker"

    @property
    def mlflow_db(self) -> Path:
        return self.tracker_dir / "mlflow.db"

    @property
    def optuna_db(self) -> Path:
        return self.tracker_dir / "optuna.db"

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    @property
    def backups_dir(self) -> Path:
        return self.root / "backups"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def token_file(self) -> Path:
        """This local lab's own Jupyter token (each worker of a remote lab has its own)."""
        return self.root / "secrets" / "jupyter_token"

    @property
    def jupyter_config(self) -> Path:
        return self.root / "secrets" / "jupyter_server_config.py"

    @property
    def artifacts_destination(self) -> str:
        if self.bucket:
            return f"gs://{self.bucket}/{ARTIFACTS_PREFIX}/{self.stack}"
        return str(self.artifacts_dir)

    def record(self, name: str) -> services.Record | None:
        return services.read(self.run_dir, name)


def check_lab_home() -> Path:
    """LAB_HOME exists (the default one is created) and is writable; otherwise a clear error."""
    home = paths.lab_home()
    explicit = bool(os.environ.get("LAB_HOME", "").strip())
    if not home.exists():
        if explicit:
            raise LabError(
                f"LAB_HOME={home} does not exist (is its disk mounted?)",
                hint=f"create it with `mkdir -p {home}` or fix LAB_HOME",
            )
        try:
            home.mkdir(parents=True, mode=0o700)
        except OSError as exc:
            raise LabError(f"cannot create {home}: {exc.strerror}", hint="set LAB_HOME to a writable folder") from None
    if not home.is_dir():
        raise LabError(f"LAB_HOME={home} is not a folder", hint="point LAB_HOME at a folder")
    probe = home / f".write-probe-{os.getpid()}"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise LabError(
            f"LAB_HOME={home} is not writable ({exc.strerror})",
            hint="fix its permissions or set LAB_HOME to a writable folder",
        ) from None
    return home


def open_lab(stack_name: str) -> LocalLab:
    """The stack's local lab; a stack without a file gets the defaults."""
    try:
        stack_file, resolution = stack.load(stack_name, target="local")
        name, bucket_explicit = stack_file.name, resolution.sources.get("lab:bucketName") == "stack"
    except stack.StackFileMissing:
        name, bucket_explicit = stack.stack_path(stack_name)[0], False
        resolution = schema.resolve({}, stack=name, target="local")
    if resolution.problems or resolution.settings is None:
        first = resolution.problems[0]
        raise LabError(
            f"the {name} stack has problems (first: {first})",
            hint=f"`lab config validate --stack {stack_name}` lists them",
        )
    settings = resolution.settings
    home = check_lab_home()
    root = home / "stacks" / name
    return LocalLab(settings=settings, root=root, bucket=settings.bucket_name if bucket_explicit else None)


def running(lab: LocalLab, name: str, say: Say) -> services.Record | None:
    """The service's record if it runs; a stale record (process gone) is removed, and said so."""
    record = lab.record(name)
    if record is None:
        return None
    if services.is_running(record):
        return record
    services.forget(lab.run_dir, name)
    say(f"{name}: cleaned up a stale record (pid {record.pid} no longer runs)")
    return None


PORT_OPTIONS = {MLFLOW: "--port", JUPYTER: "--jupyter-port", DASHBOARD: "--dashboard-port"}


def _check_port(port: int, name: str) -> None:
    holder = services.port_holder(port, HOST)
    if holder:
        raise LabError(
            f"port {port} (for {name}) is in use by {holder}",
            hint=f"stop that process or choose another port with {PORT_OPTIONS[name]}",
        )


def restore_if_empty(lab: LocalLab, say: Say) -> backups.Backup | None:
    """Before a first start: bring back the newest state there is. That is the replica's newest position or the
    newest snapshot that verifies (here, else from the bucket), whichever is newer: never an older one."""
    if lab.mlflow_db.exists():
        return None
    chosen = None
    for candidate in backups.listing(lab.backups_dir):
        try:
            backups.verify(candidate.path)
        except LabError as exc:
            say(f"skipping backup {candidate.manifest.id}: {exc.one_line()}")
            continue
        chosen = candidate
        break
    if chosen is None and lab.bucket:
        from toolkit.tracker import gcs

        try:
            chosen = gcs.download(lab.bucket, lab.stack, lab.backups_dir)
        except LabError as exc:
            say(f"no backup restored from gs://{lab.bucket}: {exc.one_line()}")
    newest = _replica_position(lab, say)
    if newest is not None and (chosen is None or newest.at > chosen.manifest.created_at):
        from_replica = restore_from_replica(lab, None, say)
        if from_replica is not None:
            older = f"; the newest snapshot, {chosen.manifest.id}, is older" if chosen else ""
            say(f"the replica {replica_url(lab)} is the newest state ({age(newest.age_s)} old){older}")
            chosen = from_replica
    if chosen is None:
        return None
    install(lab, chosen, say)
    return chosen


def replica_url(lab: LocalLab) -> str:
    """lab:replica, or the default: the bucket's replica/<stack> when the stack names a bucket, else a folder
    under LAB_HOME."""
    from toolkit.tracker import replica

    return lab.settings.replica or replica.default_url(lab.stack, lab.bucket, paths.lab_home())


def replica_env(url: str) -> dict[str, str]:
    """Litestream's environment for the replica at `url`: the allow-list and that store's credentials only
    (replica.environment). gcp-storage-emulator's address is host:port for Litestream, http://host:port for
    google-cloud-storage."""
    from toolkit.tracker import replica

    env = replica.environment(url)
    emulator = env.get("STORAGE_EMULATOR_HOST", "")
    if emulator.startswith(("http://", "https://")):
        env["STORAGE_EMULATOR_HOST"] = emulator.split("://", 1)[1].rstrip("/")
    return env


def _replica_position(lab: LocalLab, say: Say) -> Any:
    from toolkit.tracker import replica

    try:
        return replica.newest(replica_url(lab), replica_env(replica_url(lab)))
    except LabError as exc:
        say(f"could not read the replica: {exc.one_line()}")
        return None


def restore_from_replica(lab: LocalLab, at: dt.datetime | None, say: Say) -> backups.Backup | None:
    """The replica's DBs (newest, or as they were at `at`) as a verified snapshot in the backups folder
    (reason `replica`), ready to install; None when the replica holds no MLflow DB."""
    from toolkit.tracker import replica

    staging = lab.root / ".from-replica"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        url = replica_url(lab)
        env = replica_env(url)
        if not replica.restore(url, replica.DBS[0], staging / replica.DBS[0], env, at):
            return None
        for name in replica.DBS[1:]:
            replica.restore(url, name, staging / name, env, at)
        return backups.take(staging, lab.backups_dir, stack=lab.stack, reason="replica")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def install(lab: LocalLab, backup: backups.Backup, say: Say) -> None:
    tracker_db.install(lab.tracker_dir, backup, say)


def ensure_token(token_file: Path) -> str:
    """A Jupyter token: made once, kept in a 0600 file inside a 0700 folder."""
    folder = token_file.parent
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    if not token_file.exists():
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    token_file.chmod(0o600)
    return token_file.read_text().strip()


def _token(lab: LocalLab) -> str:
    return ensure_token(lab.token_file)


def start_mlflow(lab: LocalLab, port: int, say: Say) -> services.Record:
    _check_port(port, MLFLOW)
    lab.tracker_dir.mkdir(parents=True, exist_ok=True)
    if not lab.bucket:
        lab.artifacts_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{lab.mlflow_db}",
        "--artifacts-destination",
        lab.artifacts_destination,
        "--serve-artifacts",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    url = f"http://{HOST}:{port}"
    record = services.start(
        MLFLOW,
        argv,
        run_dir=lab.run_dir,
        log=lab.logs_dir / "mlflow.log",
        port=port,
        url=url,
        health_url=f"{url}/health",
        env=tracker_db.server_env(),
    )
    seconds = services.wait_healthy(record, MLFLOW_READY_TIMEOUT_S)
    say(f"mlflow answered in {seconds:.1f} s")
    return record


def start_replica(lab: LocalLab, say: Say) -> services.Record:
    """Litestream, replicating the tracker's DBs to lab:replica while MLflow runs (detached, like MLflow)."""
    from toolkit.tracker import replica

    running_now = running(lab, REPLICA, say)
    if running_now is not None:
        return running_now
    port = _free_port()
    if replica.follow(lab.tracker_dir, replica_url(lab)):
        say(f"the replica moved to {replica_url(lab)}: it starts there from a snapshot of the tracker's DBs")
    config_file = lab.root / "replica.yml"
    config_file.write_text(
        replica.config(
            lab.tracker_dir,
            replica_url(lab),
            retention_days=lab.settings.backup_days,
            addr=f"{HOST}:{port}",
            sync_interval=lab.settings.replica_sync_interval,
            socket=replica.socket_path(lab.run_dir),
        )
    )
    record = services.start(
        REPLICA,
        [replica.binary(), "replicate", "-config", str(config_file)],
        run_dir=lab.run_dir,
        log=lab.logs_dir / "replica.log",
        port=port,
        url=replica_url(lab),
        health_url=f"http://{HOST}:{port}/metrics",
        env=replica_env(replica_url(lab)),
    )
    services.wait_healthy(record, REPLICA_READY_TIMEOUT_S)
    say(f"replicating the tracker's DBs to {record.url}")
    return record


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def write_jupyter_config(lab: LocalLab) -> Path:
    """JupyterLab's config file: it reads the token from the lab's token file (0600) when it starts, so the
    token is never in argv (the process list) nor in JupyterLab's environment, which every kernel inherits."""
    _token(lab)
    config = lab.jupyter_config
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(
            "# Written by `lab up --local`: the token comes from the lab's token file, never from argv or the\n"
            "# environment (kernels inherit JupyterLab's environment).\n"
            "from pathlib import Path\n\n"
            f"c.IdentityProvider.token = Path({str(lab.token_file)!r}).read_text().strip()  # noqa: F821\n"
        )
    config.chmod(0o600)
    return config


def start_jupyter(lab: LocalLab, port: int, say: Say) -> services.Record:
    _check_port(port, JUPYTER)
    config = write_jupyter_config(lab)
    env = environment.for_kernels(
        {
            "JUPYTER_RUNTIME_DIR": str(lab.root / "secrets" / "jupyter-runtime"),
            "MLFLOW_TRACKING_URI": f"http://{HOST}:{_mlflow_port(lab)}",
            "PYTHONUNBUFFERED": "1",
        }
    )
    root_dir = paths.project_dir() / "experiments"
    argv = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--ip={HOST}",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root_dir if root_dir.is_dir() else Path.cwd()}",
        f"--config={config}",
    ]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    url = f"http://{HOST}:{port}/lab"
    record = services.start(
        JUPYTER,
        argv,
        run_dir=lab.run_dir,
        log=lab.logs_dir / "jupyter.log",
        port=port,
        url=url,
        health_url=f"http://{HOST}:{port}/api",
        env=env,
    )
    seconds = services.wait_healthy(record, JUPYTER_READY_TIMEOUT_S)
    say(f"jupyter answered in {seconds:.1f} s")
    return record


def _mlflow_port(lab: LocalLab) -> int:
    record = lab.record(MLFLOW)
    return record.port if record else schema.MLFLOW_PORT


@dataclass(frozen=True)
class _Spawned:
    """A service started and not yet answering; `by_default` when it took the default port, which gives way."""

    record: services.Record
    by_default: bool


def start_dashboard(lab: LocalLab, port: int | None, say: Say) -> services.Record:
    """optuna-dashboard on 127.0.0.1 over the lab's optuna.db (toolkit.tracker.dashboard), answering. `port` None
    is the default port, or a free one when another process holds it (said so; also when another process took it
    while the dashboard started); a port given is that port or an error."""
    return _await_dashboard(lab, _spawn_dashboard(lab, port, say), say)


def _spawn_dashboard(lab: LocalLab, port: int | None, say: Say) -> _Spawned:
    if port is not None:
        _check_port(port, DASHBOARD)
        return _Spawned(_dashboard_process(lab, port), by_default=False)
    holder = services.port_holder(optuna_dashboard.DEFAULT_PORT, HOST)
    if holder is None:
        return _Spawned(_dashboard_process(lab, optuna_dashboard.DEFAULT_PORT), by_default=True)
    return _Spawned(_dashboard_elsewhere(lab, holder, say), by_default=False)


def _await_dashboard(lab: LocalLab, spawned: _Spawned, say: Say) -> services.Record:
    try:
        seconds = services.wait_healthy(
            spawned.record, DASHBOARD_READY_TIMEOUT_S, stack_signal=optuna_dashboard.STACK_SIGNAL
        )
    except LabError:
        holder = services.port_holder(spawned.record.port, HOST) if spawned.by_default else None
        if holder is None:
            raise
        return _await_dashboard(lab, _Spawned(_dashboard_elsewhere(lab, holder, say), by_default=False), say)
    say(f"optuna-dashboard answered in {seconds:.1f} s")
    return spawned.record


def _dashboard_elsewhere(lab: LocalLab, holder: str, say: Say) -> services.Record:
    port = _free_port()
    say(f"port {optuna_dashboard.DEFAULT_PORT} is in use by {holder}: the Optuna dashboard is on {port}")
    return _dashboard_process(lab, port)


def _dashboard_process(lab: LocalLab, port: int) -> services.Record:
    lab.tracker_dir.mkdir(parents=True, exist_ok=True)
    url = f"http://{HOST}:{port}"
    return services.start(
        DASHBOARD,
        optuna_dashboard.argv(f"{optuna_dashboard.SQLITE}{lab.optuna_db}", HOST, port),
        run_dir=lab.run_dir,
        log=lab.logs_dir / "optuna-dashboard.log",
        port=port,
        url=url,
        health_url=f"{url}{optuna_dashboard.HEALTH_PATH}",
        env={**environment.passed(), "PYTHONUNBUFFERED": "1"},  # it needs no secret
    )


def stop_all(lab: LocalLab, say: Say, only: tuple[str, ...] = (JUPYTER, DASHBOARD, MLFLOW, REPLICA)) -> list[str]:
    """Stop the recorded services (all unless told): Jupyter and the dashboard, then the tracker, then its
    replication last; the names of those stopped."""
    stopped = []
    for name in only:
        record = running(lab, name, say)
        if record is None:
            continue
        how = services.stop(record)
        services.forget(lab.run_dir, name)
        say(f"{name} {how} (pid {record.pid})")
        stopped.append(name)
    return stopped


def _priced_up(lab: LocalLab) -> None:
    """This machine is up for `lab cost` and the budget from now, at its price (`hosts: {local: USD}`)."""
    from toolkit.cost import prices, uptime

    line = prices.PriceLine("host", prices.LOCAL_HOST, 1, prices.host_hourly(prices.LOCAL_HOST), "this machine")
    uptime.record_up(lab.stack, [line])


def start_guard(lab: LocalLab, say: Say) -> services.Record | None:
    """The budget guard, when lab:budgetUsd or lab:maxHours is set (one per lab: a running one is kept)."""
    if lab.settings.budget_usd is None and lab.settings.max_hours is None:
        return None
    record = running(lab, GUARD, say)
    if record is not None:
        return record
    argv = [sys.executable, "-m", "toolkit.budget.guard", "local", "--stack", lab.stack]
    every = os.environ.get("LAB_BUDGET_GUARD_EVERY_S")
    if every:
        argv += ["--every", every]
    env = {**environment.passed(), "PYTHONUNBUFFERED": "1", "LAB_HOME": str(paths.lab_home())}
    return services.start(
        GUARD, argv, run_dir=lab.run_dir, log=lab.logs_dir / "budget-guard.log", port=0, url="", health_url="", env=env
    )


def stop_guard(lab: LocalLab, say: Say) -> list[str]:
    """Stop the budget guard (not when the guard itself is stopping the lab)."""
    record = running(lab, GUARD, say)
    if record is None or record.pid == os.getpid():
        return []
    how = services.stop(record)
    services.forget(lab.run_dir, GUARD)
    say(f"{GUARD} {how} (pid {record.pid})")
    return [GUARD]


def backup_now(
    lab: LocalLab, *, reason: str, progress: backups.Progress | None = None
) -> tuple[backups.Backup, str | None]:
    """A verified backup, rotated; uploaded when a bucket is configured. Returns it and its URL in the
    bucket; a failed upload raises after the local backup is safely kept."""
    made = backups.take(lab.tracker_dir, lab.backups_dir, stack=lab.stack, reason=reason, progress=progress)
    backups.rotate(lab.backups_dir, keep_last=lab.settings.backup_keep, keep_days=lab.settings.backup_days)
    if not lab.bucket:
        return made, None
    from toolkit.tracker import gcs

    try:
        return made, gcs.upload(made, lab.bucket, lab.stack)
    except LabError as exc:
        raise UploadFailed(made, exc) from None


def backups_info(backups_dir: Path) -> dict[str, Any]:
    """What `lab status` says of a folder of backups: how many, the newest, how old."""
    known = backups.listing(backups_dir)
    latest = known[0].manifest if known else None
    now = dt.datetime.now(dt.timezone.utc)
    return {
        "count": len(known),
        "latest": latest.id if latest else None,
        "age_s": round((now - latest.created_at).total_seconds()) if latest else None,
        "folder": str(backups_dir),
    }


def choose_backup(
    backups_dir: Path, bucket: str | None, stack_name: str, request: RestoreRequest, ui: Ui, none_hint: str
) -> backups.Backup:
    """The backup a restore puts back, verified: from the bucket, by name, or the newest here."""
    if request.from_bucket:
        if not bucket:
            raise LabError("no bucket is configured for this stack", hint="set lab:bucketName in the stack file")
        from toolkit.tracker import gcs

        # The full check runs once, below.
        chosen = gcs.download(bucket, stack_name, backups_dir, request.name, check=backups.QUICK_CHECK)
    elif request.name:
        chosen = backups.find(backups_dir, request.name)
    else:
        known = backups.listing(backups_dir)
        if not known:
            raise LabError(f"there are no backups in {backups_dir}", hint=none_hint)
        chosen = known[0]
    backups.verify(chosen.path)
    ui.say(f"backup {chosen.manifest.id} verified")
    return chosen


def _preview_up(lab: LocalLab, request: UpRequest) -> Report:
    """`lab up --preview`: what `up` would start, on which ports, and where its state goes; nothing is started,
    stopped or written (a stale record is left as it is)."""
    from toolkit.tracker import dashboard as optuna_dashboard

    def state(name: str) -> services.Record | None:
        record = lab.record(name)
        return record if record is not None and services.is_running(record) else None

    wanted = {
        MLFLOW: request.port,
        DASHBOARD: request.dashboard_port or optuna_dashboard.DEFAULT_PORT,
        **({} if request.no_jupyter else {JUPYTER: request.jupyter_port}),
    }
    services_doc: dict[str, Any] = {}
    lines = [f"preview of the local lab of stack {lab.stack}: nothing was started or written"]
    for name, port in wanted.items():
        record = state(name)
        if record is not None:
            services_doc[name] = {"action": "keep", "url": record.url, "pid": record.pid}
            lines.append(f"  {name:9} runs already at {record.url} (pid {record.pid}): kept")
        else:
            url = f"http://{HOST}:{port}"
            services_doc[name] = {"action": "start", "url": url}
            also = " (or a free port, if that one is taken)" if name == DASHBOARD and not request.dashboard_port else ""
            lines.append(f"  {name:9} would start on {url}{also}")
    replica_to = replica_url(lab)
    lines.append(
        f"  {REPLICA:9} {'runs already' if state(REPLICA) else 'would start'}: the DBs replicated to {replica_to}"
    )
    restore = state(MLFLOW) is None and not lab.mlflow_db.exists()
    if restore:
        lines.append("  tracker   has no DB: the newest state there is (replica or backup) would be restored first")
    guard = lab.settings.budget_usd is not None or lab.settings.max_hours is not None
    if guard and state(GUARD) is None:
        lines.append(f"  {GUARD} would start (lab:budgetUsd / lab:maxHours)")
    lines.append(f"  state     {lab.root}")
    document = {
        "stack": lab.stack,
        "target": lab.target,
        "preview": True,
        "services": services_doc,
        "replica": replica_to,
        "restore_first": restore,
        "budget_guard": guard,
        "state_dir": str(lab.root),
    }
    return Report(document, lines)


def _lab_up(lab: LocalLab, request: UpRequest, ui: Ui) -> Report:
    say = ui.say
    mlflow = running(lab, MLFLOW, say)
    jupyter = running(lab, JUPYTER, say)
    dashboard = running(lab, DASHBOARD, say)
    lines: list[str] = []
    already = bool(mlflow and dashboard and (jupyter or request.no_jupyter))
    if already:
        before = {name for name in (REPLICA, GUARD) if running(lab, name, say)}
    else:
        if mlflow is None:
            restore_if_empty(lab, say)  # before anything opens the DBs
        # The dashboard starts while MLflow does; a failed MLflow stops it again.
        spawned = _spawn_dashboard(lab, request.dashboard_port, say) if dashboard is None else None
        try:
            if mlflow is None:
                mlflow = start_mlflow(lab, request.port, say)
        except BaseException:
            if spawned is not None:
                services.stop(spawned.record)
                services.forget(lab.run_dir, DASHBOARD)
            raise
        if spawned is not None:
            dashboard = _await_dashboard(lab, spawned, say)
        if jupyter is None and not request.no_jupyter:
            jupyter = start_jupyter(lab, request.jupyter_port, say)
    replicating = start_replica(lab, say)
    _priced_up(lab)
    guard = start_guard(lab, say)
    if already:  # what this `up` did, when the services were already up (the replica or the guard may have been not)
        started = [name for name, on in ((REPLICA, replicating), (GUARD, guard)) if on and name not in before]
        lines.append("the lab is already up; " + (f"started {', '.join(started)}" if started else "nothing changed"))
    lines.append(f"MLflow   {mlflow.url}")
    lines.append(f"Optuna   {dashboard.url}  (optuna-dashboard: the sweeps, live)")
    if jupyter:
        lines.append(f"Jupyter  {jupyter.url}  (token: `cat {lab.token_file}`)")
    lines.append(f"replica  {replicating.url}")
    lines.append(f"state    {lab.root}")
    if guard is not None:
        lines.append(f"guard    budget guard (pid {guard.pid}), log {guard.log}")
    document = {
        "stack": lab.stack,
        "target": lab.target,
        "mlflow": mlflow.url,
        "optuna_dashboard": dashboard.url,
        "jupyter": jupyter.url if jupyter else None,
        "replica": replicating.url,
        "state_dir": str(lab.root),
    }
    return Report(document, lines)


def _lab_status(lab: LocalLab, ui: Ui) -> Report:
    components: dict[str, dict[str, Any]] = {}
    for name in (MLFLOW, DASHBOARD, JUPYTER, REPLICA):
        record = running(lab, name, ui.say)
        components[name] = (
            {
                "state": "running",
                "url": record.url,
                "pid": record.pid,
                "port": record.port,
                "uptime_s": round(record.uptime_s),
                "log": record.log,
            }
            if record
            else {"state": "stopped"}
        )
    info = backups_info(lab.backups_dir)
    document = {
        "stack": lab.stack,
        "target": lab.target,
        "state_dir": str(lab.root),
        "components": components,
        "tracker_db": {
            "path": str(lab.mlflow_db),
            "size": lab.mlflow_db.stat().st_size if lab.mlflow_db.exists() else None,
        },
        "backups": info,
        "bucket": lab.bucket,
    }
    document["replica"] = replica_state(lab, components[REPLICA]["state"] == "running")
    rows = [
        (
            name,
            "[green]running[/green]" if c["state"] == "running" else "[dim]stopped[/dim]",
            c.get("url", "-"),
            age(c["uptime_s"]) if c["state"] == "running" else "-",
        )
        for name, c in components.items()
    ]
    if info["latest"]:
        note = f"latest backup: {info['latest']}, {age(info['age_s'])} old ({info['count']} kept in {lab.backups_dir})"
    else:
        note = "no backup yet: `lab backup` takes one"
    table = Table(f"lab {lab.stack} (local)", ("component", "state", "url", "uptime"), rows)
    return Report(document, [note, replica_line(document["replica"])], tables=[table])


def replica_state(lab: LocalLab, replicating: bool) -> dict[str, Any]:
    """Where the replica stands: its newest position, the tracker DB's last transaction as Litestream has it,
    how far behind that leaves the replica (transactions, and seconds since it last moved when behind), and
    Litestream's last error line."""
    from toolkit.tracker import replica

    url = replica_url(lab)
    found = replica.state(url, replica_env(url), lab.root / "replica.yml")
    last_error = _last_replica_error(lab.logs_dir / "replica.log") if replicating else None
    return {**found, "running": replicating, "last_error": last_error}


def replica_line(state: dict[str, Any]) -> str:
    """One line on the replica for `lab status`: where it stands, and loudly when it is failing or behind."""
    url, behind = state["url"], state["behind_txids"]
    if state["read_error"]:
        pending = f"{behind} transactions not replicated; " if behind else ""
        return f"replica: FAILING ({pending}retrying; the tracker is not affected): {state['read_error']}"
    if state["newest_txid"] is None:
        where = f"replica: nothing in {url} yet"
    else:
        where = f"replica: newest state {age(state['age_s'])} old (transaction {state['newest_txid']}) in {url}"
    if not state["running"]:
        return f"{where}; not replicating now (`lab up` starts it)"
    if behind:
        error = f"; last error: {state['last_error']}" if state["last_error"] else ""
        return f"{where}; BEHIND by {behind} transactions (retrying){error}"
    return f"{where}; caught up" if behind == 0 else where


def _last_replica_error(log: Path) -> str | None:
    """Litestream's last ERROR line in its log (read from the end), its message only."""
    try:
        with log.open("rb") as handle:
            handle.seek(max(log.stat().st_size - REPLICA_LOG_TAIL_BYTES, 0))
            tail = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(tail):
        if "level=ERROR" in line:
            message = line.split("msg=", 1)[-1]
            return message[:200]
    return None


def _lab_backup(lab: LocalLab, ui: Ui) -> Report:
    if not lab.mlflow_db.exists():
        raise LabError(f"there is no tracker DB at {lab.mlflow_db} yet", hint="start the lab with `lab up --local`")
    uploaded: str | None = None
    failure: LabError | None = None
    large = lab.mlflow_db.stat().st_size >= PROGRESS_FROM_BYTES and not ui.json
    try:
        if large:
            from rich.progress import Progress

            from toolkit.console import err

            with Progress(console=err(), transient=True) as bar:
                task = bar.add_task("snapshot", total=None)
                made, uploaded = backup_now(
                    lab, reason="manual", progress=lambda done, total: bar.update(task, completed=done, total=total)
                )
        else:
            made, uploaded = backup_now(lab, reason="manual")
    except UploadFailed as exc:
        made, failure = exc.backup, exc
    manifest = made.manifest
    import json

    document = json.loads(manifest.to_json())
    document.update({"path": str(made.path), "uploaded": uploaded})
    lines: list[str] = []
    for described in manifest.files:
        counts = ", ".join(f"{v} {k}" for k, v in described.counts.items())
        lines.append(
            f"{described.name}: {described.size:,} bytes, {described.check} {described.integrity}, "
            f"sha256 {described.sha256[:12]}..., {counts}"
        )
    lines.append(f"backup {manifest.id} -> {made.path}")
    if uploaded:
        lines.append(f"uploaded and verified: {uploaded}")
    return Report(document, lines, failure)


def _lab_restore(lab: LocalLab, request: RestoreRequest, ui: Ui) -> Report:
    if request.at is not None:
        if request.name or request.from_bucket:
            raise LabError("--at restores from the replica", hint="give either --at TIME or a backup, not both")
        chosen = restore_from_replica(lab, request.at, ui.say)
        if chosen is None:
            if _replica_position(lab, ui.say) is None:
                raise LabError(f"the replica {replica_url(lab)} holds no tracker DB", hint="`lab status` shows it")
            from toolkit.tracker import replica

            raise replica.too_early(replica_url(lab), request.at, replica_env(replica_url(lab)))
        backups.verify(chosen.path)
        ui.say(f"the tracker as it was at {request.at.isoformat()}, from {replica_url(lab)}: verified")
    else:
        chosen = choose_backup(
            lab.backups_dir, lab.bucket, lab.stack, request, ui, "use --from-bucket or name a backup folder"
        )
    tracker = running(lab, MLFLOW, ui.say)
    if tracker is not None:
        if not request.stop:
            raise LabError("the tracker is running", hint="pass --stop to stop it first, or `lab down --local`")
        stop_all(lab, ui.say)
    stop_all(lab, ui.say, only=(DASHBOARD,))  # it would go on showing (and writing to) the DBs it had open
    if lab.mlflow_db.exists():
        kept = backups.take(lab.tracker_dir, lab.backups_dir, stack=lab.stack, reason="pre-restore")
        ui.say(f"kept the current DBs as backup {kept.manifest.id}")
        if lab.bucket:
            from toolkit.tracker import gcs

            try:
                ui.say(f"uploaded and verified: {gcs.upload(kept, lab.bucket, lab.stack)}")
            except LabError as exc:
                ui.say(f"warning: the kept DBs stay only here: {exc.one_line()}")
    install(lab, chosen, ui.say)
    return Report(
        {"stack": lab.stack, "restored": chosen.manifest.id},
        [f"restored {chosen.manifest.id}; start the lab with `lab up --local`"],
    )


def _lab_down(lab: LocalLab, request: DownRequest, ui: Ui) -> Report:
    """Nothing written before `down` is lost: running sweeps stop as Ctrl-C stops them (their trials recorded
    as interrupted and queued again), MLflow stops taking writes (Jupyter's kernels keep running, and the
    MLflow client retries), the replica catches up with the DBs' last transaction, a final snapshot is taken
    and verified, then the rest stops. A failed snapshot starts MLflow again as it was (exit 4)."""
    from toolkit.sweeps import dispatch as sweeps

    keeps_its_data(request)
    say = ui.say
    tracker = running(lab, MLFLOW, say)
    up = [name for name in (JUPYTER, DASHBOARD, MLFLOW, REPLICA) if running(lab, name, say)]
    if not up:
        stop_guard(lab, say)
        return Report(
            {"stack": lab.stack, "stopped": [], "nothing_to_do": True}, ["nothing to do: the lab is not running"]
        )
    interrupted = sweeps.interrupt_running(lab.tracker_dir, say) if lab.tracker_dir.is_dir() else []
    dashboard = running(lab, DASHBOARD, say)
    stopped = stop_all(lab, say, only=(MLFLOW, DASHBOARD))  # the dashboard writes too (notes, study deletions)
    caught_up = replica_catch_up(lab, say)
    made = None
    if lab.mlflow_db.exists():
        try:
            made, _ = backup_now(lab, reason="down")
            say(f"backup {made.manifest.id} verified: {made.path}")
        except UploadFailed as exc:
            made = exc.backup
            say(f"warning: {exc.one_line()}")
        except LabError as exc:
            if tracker is not None and not request.force:
                start_mlflow(lab, tracker.port, say)
                if dashboard is not None:
                    start_dashboard(lab, dashboard.port, say)
                raise LabError(
                    f"the backup failed, so nothing was stopped (MLflow is running again): {exc.one_line()}",
                    hint="fix that, or pass --force to stop without a backup",
                    code=EXIT_BACKUP_FAILED,
                ) from None
            backup_failed(exc, request, ui)
    stopped += stop_all(lab, say)
    stopped += stop_guard(lab, say)
    from toolkit.cost import uptime

    uptime.record_down(lab.stack)
    document = {
        "stack": lab.stack,
        "stopped": sorted(stopped),
        "backup": str(made.path) if made else None,
        "replica_caught_up": caught_up,
        "sweeps_interrupted": interrupted,
    }
    return Report(document, [f"the lab is down ({', '.join(sorted(stopped))} stopped)"])


def replica_catch_up(lab: LocalLab, say: Say) -> bool:
    """Wait until the replica holds every transaction of the tracker's DBs (writes have stopped); False, said
    as a warning, when it is not running or cannot: the snapshot that follows still holds them."""
    from toolkit.tracker import replica

    if running(lab, REPLICA, say) is None:
        say("warning: the replica is not running, so only the snapshot keeps the last writes")
        return False
    try:
        for name in replica.DBS:
            db = lab.tracker_dir / name
            if db.exists():
                done = replica.catch_up(db, replica.socket_path(lab.run_dir), replica_env(replica_url(lab)))
                say(f"replica caught up with {name} (transaction {done.replica_txid})")
    except LabError as exc:
        say(f"warning: {exc.one_line()}; the snapshot still holds every write")
        return False
    return True


def _lab_sweep_place(lab: LocalLab, parallel: int | None, gpus: list[str] | None, ui: Ui) -> SweepPlace:
    from toolkit.cost import prices
    from toolkit.sweeps import slots

    tracker = running(lab, MLFLOW, ui.say)
    if tracker is None:
        raise LabError("the local lab is not up", hint="start it with `lab up --local`")
    slot_list = slots.local_slots(parallel or 1, gpus, lab.settings.runs_per_gpu)
    slots.price_slots(slot_list, lambda _: prices.host_hourly(prices.LOCAL_HOST), lambda _: prices.LOCAL_HOST)
    return SweepPlace(
        slot_list,
        tracker.url,
        lab.tracker_dir / "optuna.db",
        data_store=data_store(lab),
        data_root=data_root(),
        requirements=stack_requirements(lab.settings.requirements),
    )


def data_store(lab: LocalLab) -> str:
    """The dataset store (toolkit.data.fetch's address): the bucket's datasets/ when the stack names a bucket,
    else $LAB_HOME/datasets (toolkit.data.store's choice)."""
    return f"gs://{lab.bucket}/datasets" if lab.bucket else str(paths.lab_home() / "datasets")


def data_root() -> Path:
    """LAB_DATA of the local lab's trials: the datasets' copies they read."""
    return paths.lab_home() / "data"


def _detached_place(lab: LocalLab, parallel: int | None, gpus: list[str] | None) -> dict[str, Any]:
    """A detached sweep on this machine: its slots, the running tracker, the lab's study storage."""
    from toolkit.cost import prices

    tracker = running(lab, MLFLOW, lambda line: None)
    if tracker is None:
        raise LabError("the local lab is not up", hint="start it with `lab up --local`")
    return {
        "kind": "local",
        "parallel": parallel or 1,
        "gpus": gpus,
        "runs_per_gpu": lab.settings.runs_per_gpu,
        "tracking_uri": tracker.url,
        "storage": str(lab.tracker_dir / "optuna.db"),
        "usd_per_hour": prices.host_hourly(prices.LOCAL_HOST),
        "data_store": data_store(lab),
        "data_root": str(data_root()),
    }


@contextlib.contextmanager
def _study_storage(lab: LocalLab) -> Iterator[Any]:
    from toolkit.sweeps import studies

    yield studies.local_storage(lab.tracker_dir / "optuna.db")


def _prerequisites(public_key_path: str, project: str | None) -> list[Check]:
    from toolkit.labs import prerequisites as checks

    return checks.machine() + checks.local_packages()
