"""Each trial runs in a working folder of its own: two trials of a local slot (its real runner, real kernels) write
the same relative file name and read the file beside the notebook; the second still gets the slot's warm kernel."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from toolkit.sweeps import slots, workdir

nbformat = pytest.importorskip("nbformat")


def notebook(folder: Path) -> Path:
    """Reads data.csv beside it, writes model.txt (as LightGBM's example does) and says where it ran."""
    book = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("tag = ''")
    parameters.metadata["tags"] = ["parameters"]
    book.cells = [
        parameters,
        nbformat.v4.new_code_cell(
            "import os\n"
            "rows = open('data.csv').read()\n"
            "with open('model.txt', 'w') as f:\n"
            "    f.write(tag)\n"
            "with open('where.txt', 'w') as f:\n"
            "    f.write(os.environ.get('LAB_NOTEBOOK_DIR', '') + '\\n' + os.getcwd() + '\\n' + rows)\n"
        ),
    ]
    book.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    path = folder / "train.ipynb"
    nbformat.write(book, path)
    return path


def test_two_trials_write_the_same_name_without_clobbering(tmp_path):
    (tmp_path / "nb").mkdir()
    path = notebook(tmp_path / "nb")
    (tmp_path / "nb" / "data.csv").write_text("a,b\n1,2\n")
    outputs = {tag: tmp_path / "out" / f"train-{tag}.ipynb" for tag in ("one", "two")}
    outcomes: dict[str, slots.Outcome] = {}
    slot = slots.LocalSlot(name="slot-0")
    try:
        for tag, output in outputs.items():
            job = slots.Job(notebook=path, output=output, parameters={"tag": tag}, env={})
            outcomes[tag] = slot.run(job, threading.Event())
        assert slot.runner is not None and slot.runner.warm_start, "the trial's folder keeps the warm kernel usable"
    finally:
        slot.close()
    assert {tag: o.kind for tag, o in outcomes.items()} == {"one": "ok", "two": "ok"}, outcomes
    assert not (tmp_path / "nb" / "model.txt").exists(), "a trial wrote into the notebook's folder"
    for tag, output in outputs.items():
        folder = workdir.folder_of(output)
        assert (folder / "model.txt").read_text() == tag
        notebook_dir, cwd, rows = (folder / "where.txt").read_text().split("\n", 2)
        assert (notebook_dir, cwd) == (str((tmp_path / "nb").resolve()), str(folder.resolve()))
        assert rows == "a,b\n1,2\n", "the file beside the notebook is read by its relative name"


def test_big_files_and_folders_are_linked_and_an_output_folder_inside_is_left_out(tmp_path):
    (tmp_path / "nb" / "data").mkdir(parents=True)
    (tmp_path / "nb" / "big.bin").write_bytes(b"x" * (workdir.COPY_LIMIT + 1))
    (tmp_path / "nb" / "small.py").write_text("X = 1\n")
    folder = workdir.make(tmp_path / "nb", tmp_path / "nb" / "out" / "study" / "train-3-abc")
    assert (folder / "data").is_symlink() and (folder / "big.bin").is_symlink()
    assert (folder / "small.py").is_file() and not (folder / "small.py").is_symlink()
    assert not (folder / "out").exists(), "the folder that holds the trial's own is not linked into it"
