"""The manifest of a dataset version: what is hashed, the version id, and what a manifest read from a store may
name (nothing that leaves its folder)."""

from __future__ import annotations

import hashlib
import json

import pytest

from toolkit.data import manifest as manifests
from toolkit.data.manifest import Manifest
from toolkit.errors import LabError


def test_a_folder_is_every_file_below_it_hashed_with_a_version_from_its_content(tmp_path):
    (tmp_path / "train" / "deep").mkdir(parents=True)
    (tmp_path / "train" / "deep" / "x.png").write_bytes(b"\x89PNG" * 1000)
    (tmp_path / "labels.csv").write_text("a,b\n")
    (tmp_path / "empty").write_bytes(b"")
    built = manifests.build(tmp_path, "cifar100", threads=2)
    assert [e.path for e in built.files] == ["empty", "labels.csv", "train/deep/x.png"]
    png = built.files[2]
    assert (png.size, png.sha256) == (4000, hashlib.sha256(b"\x89PNG" * 1000).hexdigest())
    lines = "".join(f"{e.path}\0{e.size}\0{e.sha256}\n" for e in built.files)
    assert built.version == hashlib.sha256(lines.encode()).hexdigest()[:12]
    assert built.bytes == 4004
    # the same content elsewhere, or later, is the same version; one changed byte is another
    assert manifests.build(tmp_path, "cifar100").version == built.version
    (tmp_path / "labels.csv").write_text("a,c\n")
    assert manifests.build(tmp_path, "cifar100").version != built.version


def test_an_archive_is_a_dataset_of_that_one_file(tmp_path):
    archive = tmp_path / "cifar-100-python.tar.gz"
    archive.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 10)
    built = manifests.build(archive, "cifar100", version="v1")
    assert [(e.path, e.size) for e in built.files] == [("cifar-100-python.tar.gz", 2562)]
    assert built.version == "v1"


def test_a_manifest_reads_back_as_it_was_written(tmp_path):
    (tmp_path / "a").write_text("x")
    built = manifests.build(tmp_path, "mnist")
    document = json.loads(built.dump())
    assert set(document) == {"name", "version", "pushed_at", "bytes", "files"}
    assert document["pushed_at"].endswith("Z") and document["bytes"] == 1
    assert Manifest.load(built.dump()) == built


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "a/../../b", "a//b", "./a", "a\\b", ""])
def test_a_manifest_naming_a_path_outside_its_folder_is_refused(tmp_path, path):
    (tmp_path / "a").write_text("x")
    document = json.loads(manifests.build(tmp_path, "mnist").dump())
    document["files"][0]["path"] = path
    with pytest.raises(LabError, match="unsafe file path"):
        Manifest.load(json.dumps(document))


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("name", "../x", "not a dataset name"),
        ("version", "a/b", "not a dataset version"),
        ("pushed_at", "soon", "pushed_at"),
    ],
)
def test_a_manifest_with_a_bad_name_version_or_time_is_refused(tmp_path, field, value, says):
    (tmp_path / "a").write_text("x")
    document = json.loads(manifests.build(tmp_path, "mnist").dump())
    document[field] = value
    with pytest.raises(LabError, match=says):
        Manifest.load(json.dumps(document))


def test_names_and_refs(tmp_path):
    assert manifests.parse_ref("cifar100") == ("cifar100", None)
    assert manifests.parse_ref("stl10@v2") == ("stl10", "v2")
    for bad in ("CIFAR", "-x", "a" * 64, "a b", "stl10@", "stl10@a/b"):
        with pytest.raises(LabError):
            manifests.parse_ref(bad)
    with pytest.raises(LabError, match="holds no files"):
        manifests.build(tmp_path, "empty")
