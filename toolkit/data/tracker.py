"""The dataset store the tracker keeps when the lab has no bucket (the ssh target): /srv/lab/datasets.

The laptop reaches it over the lab's SSH access (toolkit.hosts.ssh) and works there as the tracker's user
(`sudo -n -u lab-tracker`), who owns the folder (the lab_tracker role makes it, 0750): workers cannot write it.
Blobs go up as one tar stream per push, each file's sha256 checked as it is read; the stream is unpacked into
a fresh folder beside blobs/ and only then moved into place, so a cut connection leaves no half blob behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from toolkit import proc
from toolkit.data import manifest as manifests
from toolkit.data import store as stores
from toolkit.data.manifest import FileEntry, Manifest, Progress
from toolkit.errors import LabError
from toolkit.hosts import ssh as remote

if TYPE_CHECKING:
    from toolkit.labs.base import Lab

ROOT = "/srv/lab/datasets"  # the lab_tracker role's lab_tracker_datasets_dir
OWNER = "lab-tracker"  # the lab_tracker role's lab_tracker_user
TIMEOUT_S = 300
INCOMING = ".incoming"  # NAME/.incoming/<random>/: a push's blobs until they are all there


class TrackerStore(stores.Store):
    """The store in a folder of the tracker, reached over SSH."""

    def __init__(self, access: remote.Access, host: remote.Host, root: str = ROOT, owner: str = OWNER) -> None:
        self.access, self.host, self.root, self.owner = access, host, root.rstrip("/"), owner
        self.where = f"{host.name}:{self.root}"

    @classmethod
    def of(cls, lab: Lab) -> TrackerStore:
        """The store of a lab with a remote tracker (its `access` and `hosts`)."""
        access: remote.Access = lab.access  # type: ignore[attr-defined]
        return cls(access, remote.find(lab.hosts, remote.TRACKER))  # type: ignore[attr-defined]

    # -- running things there, as the tracker's user ---------------------------------------------------------
    def _as_owner(self, *command: str) -> list[str]:
        return ["sudo", "-n", "-u", self.owner, *command]

    def _run(self, command: list[str], what: str, stdin: str | None = None) -> str:
        try:
            return remote.run(self.access, self.host, command, timeout=TIMEOUT_S, stdin=stdin).stdout
        except proc.CommandFailed as exc:
            raise LabError(
                f"{what} on {self.where} failed: {_last_line(exc.result.stderr) or exc.one_line()}",
                hint="`lab up` configures the tracker's dataset store; check that it ran",
            ) from None

    def _script(self, script: str, *args: str, what: str, stdin: str | None = None) -> str:
        return self._run(self._as_owner("sh", "-c", script, "sh", *args), what, stdin)

    def _listing(self, folder: str, depth: int) -> list[tuple[str, str, int]]:
        """(type, path below `folder`, size) of what is `depth` levels below it; the store itself must exist."""
        script = (
            'test -d "$1" || { echo "no dataset store at $1" >&2; exit 3; }; '
            'test -d "$2" || exit 0; find "$2" -mindepth "$3" -maxdepth "$3" -printf "%y\\t%P\\t%s\\n"'
        )
        out = self._script(script, self.root, folder, str(depth), what="listing the datasets")
        found = []
        for line in out.splitlines():
            kind, path, size = [*line.split("\t"), "", "0"][:3]
            if size.isdigit():
                found.append((kind, path, int(size)))
        return found

    # -- the Store's questions -----------------------------------------------------------------------------
    def names(self) -> list[str]:
        found = self._listing(self.root, 1)
        return sorted(p for kind, p, _ in found if kind == "d" and manifests.NAME_PATTERN.fullmatch(p))

    def version_ids(self, name: str) -> list[str]:
        found = self._listing(f"{self.root}/{name}/{stores.VERSIONS}", 1)
        ids = (p.removesuffix(".json") for kind, p, _ in found if kind == "f" and p.endswith(".json"))
        return sorted(v for v in ids if manifests.VERSION_PATTERN.fullmatch(v))

    def blobs(self, name: str) -> dict[str, int]:
        found = self._listing(f"{self.root}/{name}/{stores.BLOBS}", 1)
        return {p: size for kind, p, size in found if kind == "f" and manifests.SHA256_PATTERN.fullmatch(p)}

    def read_manifest(self, name: str, version: str) -> Manifest:
        path = f"{self.root}/{name}/{stores.VERSIONS}/{version}.json"
        command = self._as_owner("sh", "-c", 'test -f "$1" || exit 4; cat "$1"', "sh", path)
        result = remote.run(self.access, self.host, command, check=False, timeout=TIMEOUT_S)
        if result.returncode == 4:
            raise stores.unknown(name, version, self.where)
        if result.returncode != 0:
            raise LabError(f"reading {name}@{version} on {self.where} failed: {_last_line(result.stderr)}")
        where = f"{self.host.name}:{path}"
        return stores.checked(Manifest.load(result.stdout, where=where), name, version, where)

    def put_manifest(self, manifest: Manifest) -> None:
        folder = f"{self.root}/{manifest.name}/{stores.VERSIONS}"
        script = 'mkdir -p "$1" && cat > "$1/.$2.part" && mv -f "$1/.$2.part" "$1/$2"'
        self._script(script, folder, f"{manifest.version}.json", what="writing the manifest", stdin=manifest.dump())

    def put_blobs(self, name: str, blobs: list[tuple[FileEntry, Path]], progress: Progress | None = None) -> None:
        """One tar stream of the blobs (named by sha256), unpacked into NAME/.incoming/<random>/ and moved into
        blobs/ once it is whole."""
        folder = f"{self.root}/{name}"
        script = (
            'set -e; mkdir -p "$1/blobs" "$1/.incoming"; d=$(mktemp -d "$1/.incoming/XXXXXXXX"); '
            'trap \'rm -rf "$d"; rmdir "$1/.incoming" 2>/dev/null || true\' EXIT; '
            'tar -x -f - -C "$d" --no-same-owner --no-same-permissions; '
            'find "$d" -mindepth 1 -maxdepth 1 -type f -exec mv -f -t "$1/blobs" {} +'
        )
        argv = self.access.ssh(self.host, self._as_owner("sh", "-c", script, "sh", folder))
        with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as ssh:
            assert ssh.stdin is not None  # noqa: S101 -- piped above
            try:
                _send_tar(ssh.stdin, blobs, progress)
            except BrokenPipeError:
                pass  # the far end stopped reading: its error is below
            except BaseException:
                ssh.kill()
                raise
            finally:
                with contextlib.suppress(BrokenPipeError):
                    ssh.stdin.close()
            error = ssh.stderr.read().decode(errors="replace") if ssh.stderr else ""
            ssh.wait()
        if ssh.returncode == 255:
            raise remote.failure(self.access, self.host, error, "connection lost")
        if ssh.returncode != 0:
            raise LabError(f"sending {name}'s files to {self.where} failed: {_last_line(error) or 'tar failed'}")

    @contextlib.contextmanager
    def open_blob(self, name: str, sha256: str) -> Iterator[IO[bytes]]:
        path = f"{self.root}/{name}/{stores.BLOBS}/{sha256}"
        argv = self.access.ssh(self.host, self._as_owner("cat", "--", path))
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as ssh:
            assert ssh.stdout is not None  # noqa: S101
            yield ssh.stdout
            ssh.stdout.close()
            error = ssh.stderr.read().decode(errors="replace") if ssh.stderr else ""
            ssh.wait()
        if ssh.returncode not in (0, -13):  # -13: closed early by the reader (SIGPIPE)
            raise LabError(f"reading blob {sha256[:12]} of {name} on {self.where} failed: {_last_line(error)}")

    def delete_manifest(self, name: str, version: str) -> None:
        path = f"{self.root}/{name}/{stores.VERSIONS}/{version}.json"
        self._run(self._as_owner("rm", "-f", "--", path), f"deleting {name}@{version}")

    def delete_blobs(self, name: str, sha256s: Iterable[str]) -> None:
        names = [s for s in sha256s if manifests.SHA256_PATTERN.fullmatch(s)]
        if names:
            folder = f"{self.root}/{name}/{stores.BLOBS}"
            script = 'cd "$1" && xargs -r rm -f --'
            self._script(script, folder, what=f"deleting {name}'s files", stdin="\n".join(names) + "\n")

    def delete_all(self, name: str) -> None:
        folder = f"{self.root}/{name}"
        self._script('rm -rf -- "$1/versions" && rm -rf -- "$1"', folder, what=f"deleting {name}")


def _send_tar(stream: IO[bytes], blobs: list[tuple[FileEntry, Path]], progress: Progress | None) -> None:
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for entry, local in blobs:
            info = tarfile.TarInfo(entry.sha256)
            info.size, info.mode = entry.size, 0o644
            with local.open("rb") as source:
                reader = _Checked(source, progress)
                try:
                    archive.addfile(info, reader)
                except OSError as exc:  # shorter than its entry: tarfile's "unexpected end of data"
                    if isinstance(exc, BrokenPipeError):
                        raise
                    raise stores.changed(local) from None
                if reader.digest.hexdigest() != entry.sha256 or source.read(1):
                    raise stores.changed(local)


class _Checked:
    """A file read through, hashed (sha256) and counted as tarfile reads it."""

    def __init__(self, source: IO[bytes], progress: Progress | None) -> None:
        self.source, self.progress, self.digest = source, progress, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.digest.update(data)
        if self.progress is not None and data:
            self.progress(len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.source, name)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
