"""Checkpoints a notebook keeps in its MLflow run, so that a trial run again resumes where it stopped.

    from toolkit import checkpoints

    found = checkpoints.load_latest()          # (obj, step), or None: start from scratch
    state, done = found if found else (fresh_state(), 0)
    for step in range(done + 1, steps + 1):
        ...
        checkpoints.save(state, step)          # returns at once; the upload runs in the background
    checkpoints.flush()                        # waits for the uploads (also done at interpreter exit)

Where they go. A trial's kernel has MLFLOW_RUN_ID (the dispatcher made the run): checkpoints are artifacts of
that run, `checkpoints/step-<step, 10 digits>.pt` (`.pkl` without PyTorch) and, uploaded after it, a small
`step-<step>.json` that records its size and sha256. Outside a sweep the run is the notebook's active
`mlflow.start_run()`; without any run, `LAB_CHECKPOINT_DIR` names a local folder that gets the same files; with
none of these, `save` warns once and keeps nothing and `load_latest` returns None.

`save(obj, step)` serialises `obj` before it returns (so changing it afterwards cannot change the checkpoint):
with `torch.save` when the process has imported PyTorch (model and optimizer state dicts, tensors on any
device), else with pickle. It writes to a spool folder on local disk (TMPDIR), never memory, and hands the
file to one background thread. At most two checkpoints are ever spooled: the one being uploaded and the next
one waiting. A newer `save` replaces a waiting one (only the newest checkpoint is worth uploading; the one in
flight is never cancelled), so training never waits for the network and memory and disk stay bounded.

`flush()` waits for every pending upload and raises a LabError for any upload that failed since the last
flush. It runs at interpreter exit too, and in a Jupyter kernel each cell ends once its uploads are done (the
kernel's exit is too short for a large upload). A kernel killed hard (SIGKILL, OOM, preemption) runs nothing,
so its last checkpoint may be missing or cut: that is what the JSON record is for.

`load_latest()` returns the newest complete checkpoint of the current run, else of the run this attempt
repeats (`LAB_RESUME_RUN_ID`, set by the dispatcher on a retry), else of the run that one repeated (the
`lab.resumes` tag), and so on back; None when there is none. Complete means: its JSON record is there and
parses, and the payload has exactly the recorded size and sha256. A checkpoint without a record (its upload
was cut, or the record's) or that does not match it is skipped with a warning for the next older one.
PyTorch checkpoints load onto `map_location` ("cpu" by default: `load_state_dict` moves tensors to the
model's device). Loading unpickles: load only your own tracker's runs.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import pickle
import re
import shutil
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from toolkit.errors import LabError

FOLDER = "checkpoints"  # the artifact folder in a run
DIR_ENV = "LAB_CHECKPOINT_DIR"  # outside any MLflow run: a local folder for the checkpoints
RESUME_ENV = "LAB_RESUME_RUN_ID"  # the run a retry repeats (toolkit.sweeps.dispatch sets it)
RESUMES_TAG = "lab.resumes"  # on a run: the run it repeats
STEP_DIGITS = 10
MAX_LINEAGE = 50  # how far back along `lab.resumes` load_latest looks
MARKER = re.compile(r"step-(\d{1,19})\.json")
PAYLOAD = re.compile(r"step-(\d{1,19})\.(pt|pkl)")
FORMATS = {"torch": "pt", "pickle": "pkl"}


class CheckpointWarning(UserWarning):
    """A checkpoint skipped, or checkpoints not kept (no run to keep them in)."""


class Store(Protocol):
    """Where one run's (or folder's) checkpoints live."""

    def put(self, payload: Path, marker: Path) -> None: ...

    def listing(self) -> dict[str, int]: ...  # file name -> size in bytes

    def fetch(self, name: str, into: Path) -> Path: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class RunStore:
    """The artifacts of an MLflow run, through MlflowClient (the tracker's proxy: no storage credentials)."""

    run_id: str

    def put(self, payload: Path, marker: Path) -> None:
        client = _client()
        client.log_artifact(self.run_id, str(payload), FOLDER)
        client.log_artifact(self.run_id, str(marker), FOLDER)  # only after the payload is complete

    def listing(self) -> dict[str, int]:
        found = _client().list_artifacts(self.run_id, FOLDER)
        return {Path(f.path).name: int(f.file_size or 0) for f in found if not f.is_dir}

    def fetch(self, name: str, into: Path) -> Path:
        return Path(_client().download_artifacts(self.run_id, f"{FOLDER}/{name}", str(into)))

    def describe(self) -> str:
        return f"run {self.run_id}"


@dataclass(frozen=True)
class FolderStore:
    """A local folder (LAB_CHECKPOINT_DIR), written the same way: payload, then its record, each renamed into place."""

    path: Path

    def put(self, payload: Path, marker: Path) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        for source in (payload, marker):
            partial = self.path / f".{source.name}.partial"
            shutil.copyfile(source, partial)
            partial.replace(self.path / source.name)

    def listing(self) -> dict[str, int]:
        if not self.path.is_dir():
            return {}
        return {p.name: p.stat().st_size for p in self.path.iterdir() if p.is_file()}

    def fetch(self, name: str, into: Path) -> Path:
        return self.path / name

    def describe(self) -> str:
        return f"folder {self.path}"


@dataclass(frozen=True)
class Record:
    """A checkpoint's JSON record: what a complete payload is."""

    step: int
    file: str
    size: int
    sha256: str
    format: str

    def text(self) -> str:
        fields = {"step": self.step, "file": self.file, "bytes": self.size, "sha256": self.sha256}
        return json.dumps({**fields, "format": self.format}, indent=1) + "\n"


@dataclass
class Pending:
    store: Store
    step: int
    payload: Path
    format: str


@dataclass
class Uploader:
    """One background thread uploading spooled checkpoints: one in flight, at most one waiting."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    waiting: Pending | None = None
    busy: Pending | None = None
    failures: list[tuple[Pending, BaseException]] = field(default_factory=list)
    thread: threading.Thread | None = None
    owner: int = field(default_factory=os.getpid)

    def submit(self, job: Pending) -> None:
        with self.cond:
            while self.waiting is not None and self.waiting.store != job.store:
                self.cond.wait()  # a waiting save of another run is uploaded, never replaced
            if self.waiting is not None:
                _discard(self.waiting)  # superseded by a newer checkpoint of the same run
            self.waiting = job
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="lab-checkpoints", daemon=True)
                self.thread.start()
            self.cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self.cond:
                while self.waiting is None:
                    self.cond.wait()
                job, self.waiting, self.busy = self.waiting, None, self.waiting
            try:
                _upload(job)
            except BaseException as exc:  # kept for flush(), which re-raises it in the training thread
                with self.cond:
                    self.failures.append((job, exc))
            finally:
                _discard(job)
                with self.cond:
                    self.busy = None
                    self.cond.notify_all()

    def wait(self) -> int:
        """Wait until nothing is pending; the number of failed uploads not reported yet."""
        with self.cond:
            while self.waiting is not None or self.busy is not None:
                self.cond.wait()
            return len(self.failures)

    def flush(self) -> None:
        if os.getpid() != self.owner:
            return  # a forked child (a DataLoader worker) has no uploads of its own
        self.wait()
        with self.cond:
            failures, self.failures = self.failures, []
        if failures:
            job, exc = failures[0]
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise LabError(
                f"checkpoint step {job.step} could not be stored in {job.store.describe()}{more}: "
                f"{type(exc).__name__}: {exc}",
                hint="is the tracker reachable? the next save tries again",
            ) from exc


_state_lock = threading.Lock()
_uploader: Uploader | None = None
_spool: Path | None = None
_warned: set[str] = set()


def save(obj: Any, step: int) -> None:
    """Keep `obj` as the checkpoint of `step` (an int >= 0) in the current run; returns once it is serialised."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise LabError(f"checkpoint step must be an int >= 0, not {step!r}", hint="pass the epoch or global step")
    store = _current()
    if store is None:
        _warn_once("save", f"no MLflow run and no {DIR_ENV}: checkpoints are not kept")
        return
    fmt = "torch" if "torch" in sys.modules else "pickle"
    folder = Path(tempfile.mkdtemp(dir=_spool_folder()))
    payload = folder / f"step-{step:0{STEP_DIGITS}d}.{FORMATS[fmt]}"
    try:
        _serialise(obj, payload, fmt)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    _get_uploader().submit(Pending(store, step, payload, fmt))


def flush() -> None:
    """Wait for every pending save; raise a LabError if an upload failed since the last flush."""
    uploader = _uploader
    if uploader is not None:
        uploader.flush()


def load_latest(map_location: Any = "cpu") -> tuple[Any, int] | None:
    """The newest complete checkpoint `(obj, step)` of this run, else of the runs it repeats; None if none."""
    flush()  # this process's own saves count
    for store in _lineage():
        found = _newest(store, map_location)
        if found is not None:
            return found
    return None


# -- where checkpoints go ------------------------------------------------------------------------------
def _current() -> Store | None:
    run_id = os.environ.get("MLFLOW_RUN_ID", "").strip()
    if run_id:
        return RunStore(run_id)
    active = _active_run_id()
    if active:
        return RunStore(active)
    folder = os.environ.get(DIR_ENV, "").strip()
    return FolderStore(Path(folder).expanduser()) if folder else None


def _active_run_id() -> str | None:
    """The notebook's own `mlflow.start_run()`, when it imported mlflow (never imported here just to ask)."""
    if "mlflow" not in sys.modules:
        return None
    run = sys.modules["mlflow"].active_run()
    return run.info.run_id if run is not None else None


def _lineage() -> list[Store]:
    """The current store, then the runs it repeats: LAB_RESUME_RUN_ID, then each run's `lab.resumes` tag."""
    current = _current()
    stores: list[Store] = [current] if current is not None else []
    if current is None:
        _warn_once("load", f"no MLflow run and no {DIR_ENV}: there are no checkpoints to load")
    seen = {current.run_id} if isinstance(current, RunStore) else set()
    following = os.environ.get(RESUME_ENV, "").strip() or (
        _resumes(current.run_id) if isinstance(current, RunStore) else None
    )
    while following and following not in seen and len(seen) < MAX_LINEAGE:
        seen.add(following)
        stores.append(RunStore(following))
        following = _resumes(following)
    return stores


def _resumes(run_id: str) -> str | None:
    try:
        return _client().get_run(run_id).data.tags.get(RESUMES_TAG) or None
    except Exception as exc:  # a deleted run ends the walk back; it is no reason to fail the trial
        _warn_once(f"lineage-{run_id}", f"cannot read run {run_id} ({type(exc).__name__}): looking no further back")
        return None


def _client() -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient()


# -- saving -------------------------------------------------------------------------------------------
def _serialise(obj: Any, path: Path, fmt: str) -> None:
    if fmt == "torch":
        import torch

        torch.save(obj, path)
        return
    with path.open("wb") as handle:
        pickle.dump(obj, handle, protocol=pickle.HIGHEST_PROTOCOL)


def _upload(job: Pending) -> None:
    """Record the payload's size and hash beside it, then store the payload and, only after it, the record."""
    record = Record(job.step, job.payload.name, job.payload.stat().st_size, _sha256(job.payload), job.format)
    marker = job.payload.with_name(f"step-{job.step:0{STEP_DIGITS}d}.json")
    marker.write_text(record.text())
    job.store.put(job.payload, marker)


def _discard(job: Pending) -> None:
    shutil.rmtree(job.payload.parent, ignore_errors=True)


def _get_uploader() -> Uploader:
    global _uploader
    with _state_lock:
        if _uploader is None or _uploader.owner != os.getpid():
            _uploader = Uploader()
            _hook_cells(_uploader)
        return _uploader


def _hook_cells(uploader: Uploader) -> None:
    """In a Jupyter kernel, each cell ends once its saves are uploaded: after the last cell, Jupyter gives the
    kernel 2.5 s to exit before SIGTERM, too little for the exit flush of a large checkpoint (measured: a 200 MiB
    save was lost that way). Training inside a cell never waits; a failed upload is reported here and raised by
    the next flush()."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return

    def after_cell(*_: Any) -> None:
        if uploader.owner == os.getpid() and (failed := uploader.wait()):
            warnings.warn(
                f"{failed} checkpoint upload(s) failed; checkpoints.flush() raises the error",
                CheckpointWarning,
                stacklevel=2,
            )

    shell.events.register("post_run_cell", after_cell)


def _spool_folder() -> Path:
    global _spool
    with _state_lock:
        if _spool is None or not _spool.is_dir():
            _spool = Path(tempfile.mkdtemp(prefix="lab-checkpoints-"))
            atexit.register(_at_exit, os.getpid(), _spool)
        return _spool


def _at_exit(owner: int, spool: Path) -> None:
    if os.getpid() != owner:
        return
    try:
        flush()
    except LabError as exc:
        print(f"lab checkpoints: {exc}", file=sys.stderr)
    finally:
        shutil.rmtree(spool, ignore_errors=True)


# -- loading ------------------------------------------------------------------------------------------
def _newest(store: Store, map_location: Any) -> tuple[Any, int] | None:
    """The newest complete checkpoint in a store, skipping (with a warning) any that is not."""
    listing = store.listing()
    steps = sorted(
        ((int(m.group(1)), name) for name in listing if (m := MARKER.fullmatch(name))),
        reverse=True,
    )
    with tempfile.TemporaryDirectory(prefix="lab-checkpoint-load-") as scratch:
        for step, name in steps:
            record = _read_record(store.fetch(name, Path(scratch)), step)
            if record is None or listing.get(record.file) != record.size:
                _skip(store, step, "its record is unreadable or its file is missing or cut")
                continue
            payload = store.fetch(record.file, Path(scratch))
            if payload.stat().st_size != record.size or _sha256(payload) != record.sha256:
                _skip(store, step, "its file does not match its recorded size and sha256")
                continue
            return _deserialise(payload, record.format, map_location), step
    return None


def _read_record(path: Path, step: int) -> Record | None:
    """A checkpoint's record, or None when it is cut or does not describe a payload of that step."""
    try:
        data = json.loads(path.read_text())
        record = Record(int(data["step"]), str(data["file"]), int(data["bytes"]), str(data["sha256"]), data["format"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    payload = PAYLOAD.fullmatch(record.file)
    valid = (
        payload is not None
        and int(payload.group(1)) == step == record.step
        and FORMATS.get(record.format) == payload.group(2)
        and re.fullmatch(r"[0-9a-f]{64}", record.sha256) is not None
    )
    return record if valid else None


def _deserialise(path: Path, fmt: str, map_location: Any) -> Any:
    if fmt == "torch":
        import torch

        return torch.load(path, map_location=map_location, weights_only=False)
    with path.open("rb") as handle:
        return pickle.load(handle)  # noqa: S301 -- the lab's own checkpoint, verified against its record


def _skip(store: Store, step: int, why: str) -> None:
    warnings.warn(f"checkpoint step {step} of {store.describe()} skipped: {why}", CheckpointWarning, stacklevel=3)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, CheckpointWarning, stacklevel=3)
