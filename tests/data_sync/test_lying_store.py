"""A dataset store that lies (issue 26, finding 1): a worker's sync checks every name a store gives it (dataset,
version, each manifest path) before it becomes a path, re-checks the manifests it cached, writes no more of a file
than its manifest declares, and the tracker's dataset server answers only a request that carries the stack's token.

The liar is a real HTTP server in this process, speaking the tracker server's protocol (toolkit.data.serve), that
answers whatever the test tells it to: it is what a worker meets when the address it was given is not the lab's
tracker, or the tracker's store was tampered with.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from toolkit.data import fetch, serve
from toolkit.data.store import FolderStore, push
from toolkit.errors import LabError

ROOT = Path(__file__).resolve().parents[2]
PUSHED = "2026-01-02T03:04:05Z"
BLOB = b"pwned\n"
SHA = hashlib.sha256(BLOB).hexdigest()


class Liar(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    routes: ClassVar[dict[str, bytes]] = {}

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_GET(self) -> None:
        body = self.routes.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")


@pytest.fixture
def liar() -> Iterator[dict[str, bytes]]:
    routes: ClassVar[dict[str, bytes]] = {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("Routes", (Liar,), {"routes": routes}))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    routes["url"] = f"http://127.0.0.1:{httpd.server_address[1]}".encode()
    yield routes
    httpd.shutdown()
    httpd.server_close()


def files_outside(top: Path, root: Path) -> set[str]:
    return {str(p.relative_to(top)) for p in top.rglob("*") if p.is_file() and root not in p.parents}


def cached(version: str, tag: str, files: list[list[object]]) -> str:
    return json.dumps(
        {"tag": tag, "manifest": {"name": "toy", "version": version, "pushed_at": PUSHED, "files": files}}
    )


@pytest.mark.parametrize("version", ["../../../../planted", "..", "."])
def test_a_version_that_climbs_out_of_lab_data_is_refused_and_nothing_is_written_outside(liar, tmp_path, version):
    root = tmp_path / "work" / "data"  # LAB_DATA
    root.mkdir(parents=True)
    # What the lying version points the cached manifest at: a file anyone could have written (here beside LAB_DATA).
    planted = root / ".lab" / "toy" / "manifests" / f"{version}.json"
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_text(cached(version, "t1", [["../../../escaped.txt", len(BLOB), SHA]]))
    liar["/toy/versions/"] = json.dumps({version: "t1"}).encode()
    liar[f"/toy/blobs/{SHA}"] = BLOB
    before = files_outside(tmp_path, root)
    with pytest.raises(LabError) as refused:
        fetch.sync(liar["url"].decode(), ["toy"], root, threads=1)
    assert "\n" not in refused.value.one_line()
    assert repr(version) in refused.value.one_line() and "is not a dataset version" in refused.value.one_line()
    assert files_outside(tmp_path, root) == before, "the sync wrote outside LAB_DATA"
    assert not list(root.rglob("escaped.txt"))


def test_a_store_listing_an_unsafe_version_is_refused_from_the_command_line_in_one_line(liar, tmp_path):
    liar["/toy/versions/"] = json.dumps({"a/../../b": "t"}).encode()
    argv = [sys.executable, "-m", "toolkit.data.fetch", "--store", liar["url"].decode(), "--root", str(tmp_path), "toy"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "lists 'a/../../b' as a version of toy" in done.stderr


def test_a_planted_cached_manifest_with_climbing_paths_is_refused(liar, tmp_path):
    root = tmp_path / "work" / "data"
    kept = root / ".lab" / "toy" / "manifests" / "v1.json"  # where this host caches toy@v1's manifest
    kept.parent.mkdir(parents=True)
    kept.write_text(cached("v1", "t1", [["../../../escaped.txt", len(BLOB), SHA]]))
    liar["/toy/versions/"] = json.dumps({"v1": "t1"}).encode()
    liar[f"/toy/blobs/{SHA}"] = BLOB
    before = files_outside(tmp_path, root)
    with pytest.raises(
        LabError, match=r"cached manifest .*v1\.json has an unsafe file path '\.\./\.\./\.\./escaped"
    ) as e:
        fetch.sync(liar["url"].decode(), ["toy@v1"], root, threads=1)
    assert "\n" not in e.value.one_line()
    assert files_outside(tmp_path, root) == before
    kept.write_text(cached("v2", "t1", [["ok.txt", len(BLOB), SHA]]))  # another version's manifest under v1's name
    with pytest.raises(LabError, match=r"cached manifest .*v1\.json describes toy@v2"):
        fetch.sync(liar["url"].decode(), ["toy@v1"], root, threads=1)


def test_a_file_larger_than_its_manifest_says_is_cut_and_refused(liar, tmp_path):
    manifest = {
        "name": "toy",
        "version": "v1",
        "pushed_at": PUSHED,
        "files": [{"path": "a.bin", "size": 100, "sha256": SHA}],
    }
    liar["/toy/versions/"] = json.dumps({"v1": "t1"}).encode()
    liar["/toy/versions/v1.json"] = json.dumps(manifest).encode()
    liar[f"/toy/blobs/{SHA}"] = b"x" * (8 << 20)  # 8 MiB where 100 bytes were declared: a store filling the disk
    arrived: list[int] = []
    root = tmp_path / "data"
    with pytest.raises(LabError, match=r"toy's file a\.bin .* is larger than the 100 bytes its manifest declares") as e:
        fetch.sync(liar["url"].decode(), ["toy"], root, threads=1, progress=arrived.append)
    assert "\n" not in e.value.one_line()
    assert sum(arrived) <= 100, f"{sum(arrived)} bytes were written for a 100-byte file"
    assert not [p for p in root.rglob("*") if p.is_file() and p.suffix != ".json" and p.stat().st_size > 100]


# -- the tracker's server: only with the stack's token ------------------------------------------------------------
@pytest.fixture
def served(tmp_path: Path, token_file: Path) -> Iterator[str]:
    store = FolderStore(tmp_path / "store")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("hello\n")
    push(store, tmp_path / "src", "toy")
    httpd = serve.server(store.root, "127.0.0.1", 0, token=serve.read_token(token_file))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def status(url: str, token: str | None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        refused.close()
        return refused.code


def test_the_trackers_server_answers_only_a_request_with_the_stacks_token(served, token_file, tmp_path):
    assert status(served + "/toy/versions/", None) == 401
    assert status(served + "/toy/versions/", "s3cret-tokeX") == 401
    assert status(served + "/toy/versions/", "s3cret-token") == 200
    with pytest.raises(LabError, match=r"refused .* \(HTTP 401\).*datasets token") as refused:
        fetch.sync(served, ["toy"], tmp_path / "d1", token_file=tmp_path / "missing.token")
    assert "\n" not in refused.value.one_line()
    [synced] = fetch.sync(served, ["toy"], tmp_path / "d2", token_file=token_file)
    assert (synced.path / "a.txt").read_text() == "hello\n"


def test_the_server_does_not_start_without_a_private_token(tmp_path, token_file):
    argv = [sys.executable, "-m", "toolkit.data.serve", "--root", str(tmp_path), "--bind", "127.0.0.1", "--port", "0"]
    for extra in ([], ["--token-file", str(tmp_path / "none")]):
        done = subprocess.run([*argv, *extra], cwd=ROOT, capture_output=True, text=True, check=False, timeout=10)
        assert done.returncode != 0
    token_file.chmod(0o644)
    done = subprocess.run(
        [*argv, "--token-file", str(token_file)], cwd=ROOT, capture_output=True, text=True, check=False, timeout=30
    )
    assert done.returncode == 1 and "readable by others" in done.stderr and done.stderr.count("\n") == 1
