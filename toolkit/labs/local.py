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

import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from toolkit import environment
from toolkit.config import paths, schema, stack
from toolkit.errors import LabError
from toolkit.tracker import backups, services
from toolkit.tracker import db as tracker_db

MLFLOW = "mlflow"
JUPYTER = "jupyter"
DEFAULT_JUPYTER_PORT = 8888
HOST = "127.0.0.1"
MLFLOW_READY_TIMEOUT_S = 120.0
JUPYTER_READY_TIMEOUT_S = 90.0
ARTIFACTS_PREFIX = "mlflow-artifacts"

Say = Callable[[str], None]


class UploadFailed(LabError):
    """The backup is safe on this machine; only its copy in the bucket failed."""

    def __init__(self, backup: backups.Backup, reason: LabError) -> None:
        self.backup = backup
        super().__init__(
            f"backup {backup.manifest.id} is kept at {backup.path}, but {reason.one_line()}",
            hint="check the bucket and run `lab backup` again",
        )


@dataclass(frozen=True)
class LocalLab:
    """One stack's local lab: where its state lives and what its settings say."""

    settings: schema.Settings
    root: Path
    bucket: str | None  # only when the stack file names one (lab:bucketName)

    @property
    def stack(self) -> str:
        return self.settings.stack

    @property
    def tracker_dir(self) -> Path:
        return self.root / "tracker"

    @property
    def mlflow_db(self) -> Path:
        return self.tracker_dir / "mlflow.db"

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


def _check_port(port: int, name: str) -> None:
    holder = services.port_holder(port, HOST)
    if holder:
        raise LabError(
            f"port {port} (for {name}) is in use by {holder}",
            hint=f"stop that process or choose another port with --{'port' if name == MLFLOW else 'jupyter-port'}",
        )


def restore_if_empty(lab: LocalLab, say: Say) -> backups.Backup | None:
    """Before a first start: bring back the newest backup that verifies, local or from the bucket."""
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
    if chosen is None:
        return None
    install(lab, chosen, say)
    return chosen


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


def stop_all(lab: LocalLab, say: Say) -> list[str]:
    """Stop every recorded service (Jupyter first, the tracker last); the names of those stopped."""
    stopped = []
    for name in (JUPYTER, MLFLOW):
        record = running(lab, name, say)
        if record is None:
            continue
        how = services.stop(record)
        services.forget(lab.run_dir, name)
        say(f"{name} {how} (pid {record.pid})")
        stopped.append(name)
    return stopped


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
