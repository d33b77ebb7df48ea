"""The gcp target's Pulumi state, read without the Pulumi CLI: what exists, the stack's outputs, its locks.

Pulumi's self-managed ("diy") backend, as its source lays it out (pulumi/pulumi, pkg/backend/diy/):
  .pulumi/meta.yaml                      `version: 1` for the project layout; absent or 0 for the legacy one
                                         (meta.go@fdb4a02e: a new, empty backend gets version 1)
  project layout (version 1)             store.go@62950741 projectReferenceStore
    .pulumi/stacks/<project>/<stack>.json[.gz|.zst]
    .pulumi/locks/organization/<project>/<stack>/<uuid>.json
  legacy layout (version 0)              store.go legacyReferenceStore
    .pulumi/stacks/<stack>.json[.gz|.zst]
    .pulumi/locks/<stack>/<uuid>.json
A lock's folder is stackLockDir(FullyQualifiedName()): `organization/<project>/<stack>` for a project-scoped
stack, the bare name for a legacy one (lock.go@1e5fa8de, backend.go@002d8492); the lock file is
{"pid", "username", "hostname", "timestamp"} (lock.go lockContent). Of a stack's .json, .json.gz and .json.zst
the most recently modified one is the checkpoint (state.go@05a64e35 stackPath), and its compression is told
by its first bytes (getCheckpoint: encoding.DetectCompression). Reading them directly lets `lab down` and
`lab status` answer on a machine without the CLI, and lets a second `lab down` be refused before it touches
anything. The backend is a folder (file://) or a GCS bucket (gs://); google-cloud-storage is imported only
for the latter, zstandard only for a .zst checkpoint.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.config import paths, schema
from toolkit.errors import LabError

PROJECT = paths.PROJECT_NAME
# The Pulumi project of what outlives `lab down` (infra/persistent/: the artifact bucket), one stack per lab stack,
# of the same name. A project of its own, so its stacks never share a name with lab's in the project layout.
PERSISTENT_PROJECT = f"{PROJECT}-persistent"
ORGANIZATION = "organization"  # the diy backend's one organization (store.go ParseReference)
STACK_TYPE = "pulumi:pulumi:Stack"
PROVIDER_PREFIX = "pulumi:providers:"
CHECKPOINT_SUFFIXES = (".json", ".json.gz", ".json.zst")
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class Resource:
    """A resource of the checkpoint (apitype ResourceV3), or one an interrupted operation left behind.

    `delete`: replaced, and still there until the next update deletes it (CreateStep.Apply marks the old
    resource `Delete`, step.go@004205f2). `pending_replacement`: already deleted by a delete-before-replace,
    not yet created again. `pending`: the type of an operation the engine started and never finished
    (checkpoint.latest.pending_operations: creating, updating, deleting, reading, importing).
    """

    urn: str
    type: str
    outputs: dict[str, Any] = field(default_factory=dict)
    custom: bool = True
    delete: bool = False
    pending_replacement: bool = False
    external: bool = False
    pending: str | None = None

    @property
    def name(self) -> str:
        return self.urn.rsplit("::", 1)[-1]

    @property
    def may_exist(self) -> bool:
        """Whether this can be a real cloud resource that a destroy must remove (and that costs money)."""
        if not self.custom or self.type.startswith(PROVIDER_PREFIX) or self.type == STACK_TYPE:
            return False
        if self.external or self.pending_replacement:
            return False  # not the stack's to delete / already deleted
        return self.pending in (None, "creating", "updating", "deleting", "importing")

    def describe(self) -> str:
        kind = self.type.split(":")[-1]
        if self.pending:
            return f"{kind} {self.name} (interrupted while {self.pending})"
        if self.delete:
            return f"{kind} {self.name} (replaced, still to be deleted)"
        return f"{kind} {self.name}"


@dataclass(frozen=True)
class State:
    """One stack's last checkpoint: its resources (the stack and providers included) and outputs."""

    resources: tuple[Resource, ...]
    path: str = ""

    @property
    def cloud_resources(self) -> tuple[Resource, ...]:
        """What costs money or holds data: every custom resource that may exist, the ones replaced but not
        yet deleted and the ones an interrupted `up` may have created included; not the stack itself,
        providers, components, read-only (external) resources, or those a replacement already deleted."""
        return tuple(r for r in self.resources if r.may_exist)

    @property
    def outputs(self) -> dict[str, Any]:
        for resource in self.resources:
            if resource.type == STACK_TYPE:
                return dict(resource.outputs)
        return {}

    def of_type(self, type_: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_ and r.pending is None]


@dataclass(frozen=True)
class Lock:
    """A lock file: who holds the stack, and since when (as Pulumi wrote it)."""

    path: str
    who: str
    since: str

    def describe(self) -> str:
        return f"held by {self.who or 'someone'} since {self.since or 'an unknown time'}"


def backend_url(settings: schema.Settings) -> str:
    """lab:stateBackend, or file://$LAB_HOME/pulumi; a file:// folder with ~ expanded."""
    url = settings.state_backend or f"file://{paths.lab_home() / 'pulumi'}"
    if url.startswith("file://"):
        return "file://" + str(Path(url.removeprefix("file://")).expanduser())
    return url


class _Store:
    """Reads files under a backend URL (a local folder or a bucket)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.bucket_name: str | None = None
        self.prefix = ""
        self.folder: Path | None = None
        if url.startswith("gs://"):
            name, _, prefix = url.removeprefix("gs://").partition("/")
            self.bucket_name, self.prefix = name, prefix.strip("/")
        elif url.startswith("file://"):
            self.folder = Path(url.removeprefix("file://"))
        else:
            raise LabError(f"unsupported state backend {url}", hint="use file://FOLDER or gs://BUCKET")
        self._bucket: Any = None

    def _key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def _gcs(self) -> Any:
        if self._bucket is None:
            from google.cloud import storage  # heavy: only for gs:// backends

            try:
                self._bucket = storage.Client().bucket(self.bucket_name)
            except Exception as exc:  # credential errors come in several types
                raise LabError(
                    f"cannot reach the state bucket {self.url}: {exc}".splitlines()[0],
                    hint="log in with `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS",
                ) from None
        return self._bucket

    def read(self, relative: str) -> bytes | None:
        if self.folder is not None:
            path = self.folder / relative
            try:
                return path.read_bytes()
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise LabError(f"cannot read the Pulumi state {path}: {exc.strerror}") from None
        from google.api_core import exceptions as gexc

        try:
            return self._gcs().blob(self._key(relative)).download_as_bytes()
        except gexc.NotFound:
            return None
        except gexc.GoogleAPICallError as exc:
            raise LabError(f"cannot read {self.url}/{relative}: {exc.message}") from None

    def list(self, relative_folder: str) -> list[str]:
        """Paths (relative to the backend) of the files directly in a folder."""
        return sorted(self.listed(relative_folder))

    def listed(self, relative_folder: str) -> dict[str, float]:
        """The files directly in a folder, each with when it was last modified (seconds since the epoch)."""
        if self.folder is not None:
            folder = self.folder / relative_folder
            if not folder.is_dir():
                return {}
            try:
                return {f"{relative_folder}/{p.name}": p.stat().st_mtime for p in folder.iterdir() if p.is_file()}
            except OSError as exc:
                raise LabError(f"cannot list the Pulumi state {folder}: {exc.strerror}") from None
        from google.api_core import exceptions as gexc

        prefix = self._key(relative_folder).rstrip("/") + "/"
        try:
            blobs = list(self._gcs().client.list_blobs(self.bucket_name, prefix=prefix))
        except gexc.NotFound:
            return {}
        except gexc.GoogleAPICallError as exc:
            raise LabError(f"cannot list {self.url}/{relative_folder}: {exc.message}") from None
        strip = len(self.prefix) + 1 if self.prefix else 0
        return {
            b.name[strip:]: b.updated.timestamp() if b.updated else 0.0
            for b in blobs
            if "/" not in b.name[len(prefix) :]
        }


def _decode(raw: bytes, name: str) -> Any:
    """A checkpoint's JSON; gzip and zstd are told by their first bytes, as Pulumi tells them."""
    try:
        if raw.startswith(GZIP_MAGIC):
            raw = gzip.decompress(raw)
        elif raw.startswith(ZSTD_MAGIC):
            raw = _unzstd(raw, name)
    except (OSError, EOFError) as exc:
        raise LabError(f"the Pulumi state {name} cannot be decompressed ({exc})") from None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LabError(f"the Pulumi state {name} is not valid JSON ({exc})") from None


def _unzstd(raw: bytes, name: str) -> bytes:
    try:
        from compression import zstd  # type: ignore[import-not-found]  # the standard library from Python 3.14
    except ImportError:
        pass
    else:
        try:
            return zstd.decompress(raw)
        except zstd.ZstdError as exc:
            raise LabError(f"the Pulumi state {name} is not valid zstd ({exc})") from None
    try:
        import zstandard
    except ImportError:
        from toolkit.config.paths import install_command

        raise LabError(
            f"the Pulumi state {name} is zstd-compressed, and this Python cannot read zstd",
            hint=f"install the gcp extra again: {install_command('gcp')}",
        ) from None
    try:
        # Pulumi's zstd writer may leave the content size out of the frame header: read it as a stream.
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True).read()
    except zstandard.ZstdError as exc:
        raise LabError(f"the Pulumi state {name} is not valid zstd ({exc})") from None


def backend_layout(url: str) -> str:
    """The layout of the backend at `url` ("project" or "legacy"), see `layout`."""
    return layout(_Store(url))


def layout(store: _Store) -> str:
    """ "project" or "legacy": how the backend lays out stacks, decided as Pulumi decides it (meta.go
    ensurePulumiMeta): meta.yaml's version; without one, legacy if any stack file sits directly in
    .pulumi/stacks, else project (what Pulumi writes into a new backend)."""
    import yaml

    raw = store.read(".pulumi/meta.yaml")
    if raw is not None:
        try:
            meta = yaml.safe_load(raw)
        except yaml.YAMLError:
            meta = None
        version = meta.get("version") if isinstance(meta, dict) else None
        if not isinstance(version, int):
            raise LabError(f"{store.url}/.pulumi/meta.yaml has no version; the state backend is damaged")
        return "project" if version >= 1 else "legacy"
    legacy = [p for p in store.listed(".pulumi/stacks") if p.endswith(CHECKPOINT_SUFFIXES)]
    return "legacy" if legacy else "project"


def checkpoint_path(store: _Store, stack: str, project: str = PROJECT) -> str | None:
    """The stack's checkpoint file: of .json, .json.gz and .json.zst, the most recently modified."""
    folder = f".pulumi/stacks/{project}" if layout(store) == "project" else ".pulumi/stacks"
    wanted = {f"{folder}/{stack}{suffix}" for suffix in CHECKPOINT_SUFFIXES}
    found = {path: mtime for path, mtime in store.listed(folder).items() if path in wanted}
    if not found:
        return None
    return max(found, key=lambda path: found[path])


def _resource(entry: dict[str, Any], pending: str | None = None) -> Resource:
    return Resource(
        urn=str(entry.get("urn", "")),
        type=str(entry.get("type", "")),
        outputs=entry.get("outputs") or {},
        custom=bool(entry.get("custom", True)),
        delete=bool(entry.get("delete")),
        pending_replacement=bool(entry.get("pendingReplacement")),
        external=bool(entry.get("external")),
        pending=pending,
    )


def read(url: str, stack: str, project: str = PROJECT) -> State | None:
    """The stack's last checkpoint (of project `project`: lab's, or PERSISTENT_PROJECT's); None when the stack was
    never created (or was removed).

    Every resource of `checkpoint.latest.resources` is kept, those marked `delete` (replaced, deleted only by
    the next update) included, and every operation of `checkpoint.latest.pending_operations` (an `up` that
    was interrupted: a VM may exist that no resource of the checkpoint names) becomes a Resource too."""
    store = _Store(url)
    relative = checkpoint_path(store, stack, project)
    if relative is None:
        return None
    raw = store.read(relative)
    if raw is None:
        return None
    document = _decode(raw, relative)
    checkpoint = document.get("checkpoint") if isinstance(document, dict) else None
    latest = (checkpoint or {}).get("latest") or {}
    resources = [_resource(r) for r in latest.get("resources") or [] if isinstance(r, dict)]
    for operation in latest.get("pending_operations") or []:
        entry = operation.get("resource") if isinstance(operation, dict) else None
        if isinstance(entry, dict):
            resources.append(_resource(entry, pending=str(operation.get("type") or "unknown")))
    return State(resources=tuple(resources), path=relative)


def lock_folders(stack: str, project: str = PROJECT) -> tuple[str, ...]:
    """Where the diy backend keeps the stack's locks: stackLockDir of its fully qualified name, project-scoped
    (`organization/<project>/<stack>`) or legacy (`<stack>`). Both are looked at: a lock in either stops us."""
    return (f".pulumi/locks/{ORGANIZATION}/{project}/{stack}", f".pulumi/locks/{stack}")


def locks(url: str, stack: str, project: str = PROJECT) -> list[Lock]:
    """The stack's current locks: a running `pulumi up`/`destroy` (here or elsewhere) holds one."""
    store = _Store(url)
    found: list[Lock] = []
    for folder in lock_folders(stack, project):
        for relative in store.list(folder):
            if not relative.endswith(".json"):
                continue
            raw = store.read(relative) or b"{}"
            try:
                content = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                content = {}
            if not isinstance(content, dict):
                content = {}
            who = "@".join(str(p) for p in (content.get("username"), content.get("hostname")) if p)
            if content.get("pid"):
                who += f" (pid {content['pid']})"
            found.append(Lock(path=relative, who=who, since=str(content.get("timestamp", ""))))
    return found


def passphrase_ready(settings: schema.Settings) -> None:
    """Pulumi's passphrase secrets provider needs its passphrase from the environment: say so up front."""
    if settings.secrets_provider != "passphrase":
        return
    if os.environ.get("PULUMI_CONFIG_PASSPHRASE") is None and not os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE"):
        raise LabError(
            "the stack's secrets use a passphrase, and neither PULUMI_CONFIG_PASSPHRASE nor "
            "PULUMI_CONFIG_PASSPHRASE_FILE is set",
            hint="export PULUMI_CONFIG_PASSPHRASE_FILE=/path/to/a/0600/file (or set lab:secretsProvider to a KMS key)",
        )
