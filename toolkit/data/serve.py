"""The tracker's dataset store, read-only, for the workers (the ssh target without a bucket).

`python -m toolkit.data.serve --root /srv/lab/datasets --bind ADDRESS --port 5003 --token-file FILE`
(lab-datasets.service on the tracker, as the tracker's user). Standard library and the toolkit's name checks only.
It answers GET and HEAD (any other method: 501), and only a request that carries the stack's dataset token,
`Authorization: Bearer TOKEN` (compared in constant time; else 401). The token file (the roles write the same one
on the tracker and on each worker, 0600) must be readable by its owner alone, or the server does not start:

- `/NAME/versions/`            -> JSON {VERSION: tag}, the tag changing when that manifest does
- `/NAME/versions/VERSION.json` -> the manifest
- `/NAME/blobs/SHA256`          -> the blob; `Range: bytes=N-` resumes it (206)

Every path is matched against the store's names (NAME, VERSION, a sha256) before it becomes a file name, so
nothing outside the store can be read, and there is no way to write. The tracker's firewall lets only the
workers reach its port (the `inet lab` table, as for MLflow).
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from toolkit.data.manifest import VERSION_PATTERN
from toolkit.errors import LabError

DEFAULT_PORT = 5003  # lab_tracker_datasets_port's default
CHUNK = 1 << 20
ROUTE = re.compile(
    r"/(?P<name>[a-z0-9][a-z0-9._-]{0,62})/"
    r"(?:versions/(?:(?P<version>[A-Za-z0-9._-]{1,64})\.json)?|blobs/(?P<blob>[0-9a-f]{64}))"
)
RANGE = re.compile(r"bytes=(\d+)-")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # kept-alive connections: a worker fetching 50,000 files opens a few
    server_version = "lab-datasets"
    root: Path = Path("/srv/lab/datasets")
    token: bytes = b""  # an empty token answers nothing

    def log_message(self, format: str, *args: object) -> None:
        return  # one line per file of 50,000 would drown the journal

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _refuse(self, status: HTTPStatus) -> None:
        self.send_response(status)
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="lab-datasets"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _allowed(self) -> bool:
        sent = self.headers.get("Authorization", "").encode("utf-8", "replace")
        return bool(self.token) and hmac.compare_digest(sent, b"Bearer " + self.token)

    def _answer(self, body: bool) -> None:
        if not self._allowed():
            self._refuse(HTTPStatus.UNAUTHORIZED)
            return
        match = ROUTE.fullmatch(self.path.split("?", 1)[0])
        if match is None or (match["version"] is not None and not VERSION_PATTERN.fullmatch(match["version"])):
            self._refuse(HTTPStatus.NOT_FOUND)
            return
        name, version, blob = match["name"], match["version"], match["blob"]
        if blob is not None:
            self._file(self.root / name / "blobs" / blob, body, ranged=True)
        elif version is not None:
            self._file(self.root / name / "versions" / f"{version}.json", body, ranged=False)
        else:
            self._listing(self.root / name / "versions", body)

    def _listing(self, folder: Path, body: bool) -> None:
        found = {}
        try:
            for entry in os.scandir(folder):
                if entry.name.endswith(".json") and entry.is_file(follow_symlinks=False):
                    stat = entry.stat()
                    found[entry.name[: -len(".json")]] = f"{stat.st_size}-{stat.st_mtime_ns}"
        except FileNotFoundError:
            self._refuse(HTTPStatus.NOT_FOUND)
            return
        data = json.dumps(found).encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _file(self, path: Path, body: bool, ranged: bool) -> None:
        try:
            handle = path.open("rb")
        except OSError:
            self._refuse(HTTPStatus.NOT_FOUND)
            return
        with handle:
            size = os.fstat(handle.fileno()).st_size
            wanted = RANGE.fullmatch(self.headers.get("Range", "")) if ranged else None
            start = min(int(wanted[1]), size) if wanted else 0
            self.send_response(HTTPStatus.PARTIAL_CONTENT if wanted else HTTPStatus.OK)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size - start))
            if wanted:
                self.send_header("Content-Range", f"bytes {start}-{max(size - 1, start)}/{size}")
            self.end_headers()
            if body:
                handle.seek(start)
                shutil.copyfileobj(handle, self.wfile, CHUNK)


def read_token(path: Path) -> str:
    """The dataset token in `path`: a one-line error when it is missing, empty, or readable by others."""
    try:
        mode = path.stat().st_mode
        token = path.read_text().strip()
    except OSError as exc:
        raise LabError(f"no dataset token at {path} ({exc.strerror})", hint="run `lab up` to write it") from None
    if mode & 0o077:
        raise LabError(f"the dataset token {path} is readable by others (mode {mode & 0o777:o})", hint="chmod 600 it")
    if not token:
        raise LabError(f"the dataset token {path} is empty", hint="run `lab up` to write it")
    return token


def server(root: Path, bind: str, port: int, handler: type[Handler] = Handler, *, token: str) -> ThreadingHTTPServer:
    """A server of the store at `root` for requests with `token` (not yet serving: call serve_forever)."""
    made = type("StoreHandler", (handler,), {"root": root, "token": token.encode()})
    httpd = ThreadingHTTPServer((bind, port), made)
    httpd.daemon_threads = True
    return httpd


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit.data.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="the store's folder (/srv/lab/datasets)")
    parser.add_argument("--bind", required=True, help="the tracker's internal address")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--token-file", type=Path, required=True, help="the stack's dataset token (0600)")
    args = parser.parse_args(argv)
    try:
        token = read_token(args.token_file)
    except LabError as exc:
        print(exc.one_line(), file=sys.stderr)
        return 1
    args.root.mkdir(parents=True, exist_ok=True)
    httpd = server(args.root, args.bind, args.port, token=token)
    print(f"serving {args.root} read-only on http://{args.bind}:{args.port}", file=sys.stderr, flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        return 0
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
