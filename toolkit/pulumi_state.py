"""The gcp target's Pulumi state, read without the Pulumi CLI: what exists, the stack's outputs, its locks.

Pulumi's self-managed ("diy") backends keep one JSON checkpoint per stack and one file per lock:
  <backend>/.pulumi/stacks/<project>/<stack>.json[.gz]    (older backends: .pulumi/stacks/<stack>.json)
  <backend>/.pulumi/locks/<project>/<stack>/<lock>.json
Reading them directly lets `lab down` and `lab status` answer on a machine without the CLI, and lets a
second `lab down` be refused before it touches anything. The backend is a folder (file://) or a GCS
bucket (gs://); google-cloud-storage is imported only for the latter.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit import paths, schema
from toolkit.errors import LabError

PROJECT = paths.PROJECT_NAME
STACK_TYPE = "pulumi:pulumi:Stack"
PROVIDER_PREFIX = "pulumi:providers:"


@dataclass(frozen=True)
class Resource:
    urn: str
    type: str
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.urn.rsplit("::", 1)[-1]


@dataclass(frozen=True)
class State:
    """One stack's last checkpoint: its resources (the stack and providers included) and outputs."""

    resources: tuple[Resource, ...]

    @property
    def cloud_resources(self) -> tuple[Resource, ...]:
        """What costs money or holds data: everything but the stack itself, providers and components."""
        return tuple(
            r
            for r in self.resources
            if r.type != STACK_TYPE and not r.type.startswith(PROVIDER_PREFIX) and not r.type.startswith("lab:")
        )

    @property
    def outputs(self) -> dict[str, Any]:
        for resource in self.resources:
            if resource.type == STACK_TYPE:
                return dict(resource.outputs)
        return {}

    def of_type(self, type_: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_]


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
        if self.folder is not None:
            folder = self.folder / relative_folder
            if not folder.is_dir():
                return []
            return sorted(f"{relative_folder}/{p.name}" for p in folder.iterdir() if p.is_file())
        from google.api_core import exceptions as gexc

        prefix = self._key(relative_folder).rstrip("/") + "/"
        try:
            names = [b.name for b in self._gcs().client.list_blobs(self.bucket_name, prefix=prefix)]
        except gexc.NotFound:
            return []
        except gexc.GoogleAPICallError as exc:
            raise LabError(f"cannot list {self.url}/{relative_folder}: {exc.message}") from None
        strip = len(self.prefix) + 1 if self.prefix else 0
        return sorted(n[strip:] for n in names if "/" not in n[len(prefix) :])


def _decode(raw: bytes, name: str) -> Any:
    if name.endswith(".gz"):
        raw = gzip.decompress(raw)
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise LabError(f"the Pulumi state {name} is not valid JSON ({exc.msg})") from None


def read(url: str, stack: str) -> State | None:
    """The stack's last checkpoint; None when the stack was never created (or was removed)."""
    store = _Store(url)
    for relative in (
        f".pulumi/stacks/{PROJECT}/{stack}.json",
        f".pulumi/stacks/{PROJECT}/{stack}.json.gz",
        f".pulumi/stacks/{stack}.json",
        f".pulumi/stacks/{stack}.json.gz",
    ):
        raw = store.read(relative)
        if raw is None:
            continue
        document = _decode(raw, relative)
        latest = ((document or {}).get("checkpoint") or {}).get("latest") or {}
        resources = tuple(
            Resource(urn=r.get("urn", ""), type=r.get("type", ""), outputs=r.get("outputs") or {})
            for r in latest.get("resources") or []
            if not r.get("delete")  # pending deletions are gone already
        )
        return State(resources=resources)
    return None


def locks(url: str, stack: str) -> list[Lock]:
    """The stack's current locks: a running `pulumi up`/`destroy` (here or elsewhere) holds one."""
    store = _Store(url)
    found: list[Lock] = []
    for folder in (f".pulumi/locks/{PROJECT}/{stack}", f".pulumi/locks/{stack}"):
        for relative in store.list(folder):
            raw = store.read(relative) or b"{}"
            try:
                content = json.loads(raw)
            except json.JSONDecodeError:
                content = {}
            who = "@".join(p for p in (content.get("username"), content.get("hostname")) if p)
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
