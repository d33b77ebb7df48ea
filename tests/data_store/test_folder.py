"""`lab data push/ls/rm` on the local target without a bucket: the store is $LAB_HOME/datasets, in the layout
every store has (NAME/blobs/<sha256>, NAME/versions/<VERSION>.json)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "cifar"
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "a.bin").write_bytes(b"a" * 300_000)
    (folder / "train" / "b.bin").write_bytes(b"b" * 1000)
    (folder / "meta.txt").write_text("same\n")
    (folder / "copy.txt").write_text("same\n")  # two paths, one blob
    return folder


def store_of(isolated: Path) -> Path:
    return isolated / ".lab" / "datasets"


def push(lab, path: Path, *args: str):
    return lab("data", "push", str(path), "--local", *args)


def test_push_then_push_again_uploads_nothing(lab, isolated, data):
    first = push(lab, data, "--name", "cifar", "--json")
    assert first.code == 0, first.err
    pushed = json.loads(first.out)
    assert (pushed["files"], pushed["uploaded_files"], pushed["already_there"]) == (4, 3, False)
    assert pushed["bytes"] == pushed["uploaded_bytes"] + 5
    root = store_of(isolated) / "cifar"
    blobs = {p.name: p.read_bytes() for p in (root / "blobs").iterdir()}
    assert blobs == {hashlib.sha256(b).hexdigest(): b for b in (b"a" * 300_000, b"b" * 1000, b"same\n")}
    manifest = json.loads((root / "versions" / f"{pushed['version']}.json").read_text())
    assert [f["path"] for f in manifest["files"]] == ["copy.txt", "meta.txt", "train/a.bin", "train/b.bin"]
    stamps = {p.name: p.stat().st_mtime_ns for p in (root / "blobs").iterdir()}

    again = push(lab, data, "--name", "cifar")
    assert again.code == 0, again.err
    assert again.out.startswith(f"nothing to upload: cifar@{pushed['version']} (4 files, 301.0 kB) is already in")
    assert {p.name: p.stat().st_mtime_ns for p in (root / "blobs").iterdir()} == stamps
    # the same files under another version: only its manifest is written
    named = push(lab, data, "--name", "cifar", "--version", "v2")
    assert named.code == 0 and "nothing to upload, every file was already there" in named.out, named
    assert {p.name: p.stat().st_mtime_ns for p in (root / "blobs").iterdir()} == stamps
    # one new file: only it is sent
    (data / "train" / "c.bin").write_bytes(b"c" * 10)
    more = json.loads(push(lab, data, "--name", "cifar", "--json").out)
    assert (more["files"], more["uploaded_files"], more["uploaded_bytes"]) == (5, 1, 10)


def test_ls_shows_each_version_newest_first(lab, isolated, data, tmp_path):
    empty = lab("data", "ls", "--local")
    assert empty.code == 0 and empty.out.startswith("no datasets in "), empty
    assert push(lab, data, "--name", "cifar", "--version", "v1").code == 0
    archive = tmp_path / "stl10.tar.gz"
    archive.write_bytes(b"\x1f\x8b" * 5000)
    assert push(lab, archive, "--name", "stl10").code == 0
    (data / "extra").write_text("x")
    assert push(lab, data, "--name", "cifar", "--version", "v2").code == 0
    listed = json.loads(lab("data", "ls", "--local", "--json").out)
    assert listed["store"] == str(store_of(isolated))
    by_name = {d["name"]: d["versions"] for d in listed["datasets"]}
    assert [v["version"] for v in by_name["cifar"]] == ["v2", "v1"]
    assert [(v["files"], v["bytes"]) for v in by_name["cifar"]] == [(5, 301_011), (4, 301_010)]
    assert [(v["files"], v["bytes"]) for v in by_name["stl10"]] == [(1, 10_000)]
    assert all(v["pushed_at"].endswith("Z") for v in by_name["cifar"])
    table = lab("data", "ls", "--local")
    assert table.code == 0
    assert "v2 (newest)" in table.out and "301.0 kB" in table.out and "stl10" in table.out, table.out


def test_rm_asks_and_keeps_what_another_version_uses(lab, isolated, data):
    assert push(lab, data, "--name", "cifar", "--version", "v1").code == 0
    (data / "train" / "b.bin").write_bytes(b"B" * 1000)
    assert push(lab, data, "--name", "cifar", "--version", "v2").code == 0
    root = store_of(isolated) / "cifar"
    assert len(list((root / "blobs").iterdir())) == 4

    unasked = lab("data", "rm", "cifar@v1", "--local")  # no terminal here: a question needs --yes
    assert unasked.code == 1 and "needs a yes" in unasked.err and "--yes" in unasked.err, unasked
    assert (root / "versions" / "v1.json").is_file()

    gone = lab("data", "rm", "cifar@v1", "--local", "--yes")
    assert gone.code == 0 and "deleted cifar@v1" in gone.out, gone
    # v1's own b.bin went; the blobs v2 still uses stayed
    assert sorted(p.name for p in (root / "versions").iterdir()) == ["v2.json"]
    assert hashlib.sha256(b"b" * 1000).hexdigest() not in {p.name for p in (root / "blobs").iterdir()}
    assert len(list((root / "blobs").iterdir())) == 3

    whole = lab("data", "rm", "cifar", "--local", "--yes", "--json")
    assert whole.code == 0 and json.loads(whole.out)["versions"] == ["v2"], whole
    assert not root.exists()


BAD = [
    (("rm", "nothing-here", "--yes"), "no dataset nothing-here in the store"),
    (("rm", "cifar@v9", "--yes"), "no dataset cifar@v9 in the store"),
    (("rm", "Cifar!"), "'Cifar!' is not a dataset name"),
    (("rm", "cifar@a/b"), "'a/b' is not a dataset version"),
    (("push", "{data}", "--name", "../up"), "'../up' is not a dataset name"),
    (("push", "{data}", "--name", "ok", "--version", "v 1"), "'v 1' is not a dataset version"),
    (("push", "{data}/missing", "--name", "ok"), "is neither a folder nor a file"),
    (("push", "{empty}", "--name", "ok"), "holds no files"),
]


def test_bad_input_is_one_line_naming_it(lab, data, tmp_path):
    assert push(lab, data, "--name", "cifar", "--version", "v1").code == 0
    (tmp_path / "empty").mkdir()
    for args, says in BAD:
        argv = [a.format(data=data, empty=tmp_path / "empty") for a in args]
        ran = lab("data", *argv, "--local")
        assert ran.code == 1, (argv, ran)
        assert says in ran.err and len(ran.err.strip().splitlines()) == 1, (argv, ran.err)
        if "no dataset" in says:
            assert "`lab data ls` lists the datasets" in ran.err


def test_a_version_name_taken_by_other_files_is_refused(lab, data):
    assert push(lab, data, "--name", "cifar", "--version", "v1").code == 0
    (data / "meta.txt").write_text("changed\n")
    ran = push(lab, data, "--name", "cifar", "--version", "v1")
    assert ran.code == 1 and "cifar@v1 is already in the store with other files" in ran.err, ran
    assert "lab data rm cifar@v1" in ran.err
