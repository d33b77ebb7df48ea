"""The shell scripts an SSH slot sends to a worker, run here by sh as the worker would run them (in the login
user's home): ~/.lab-trials is private (0700) and never used when someone else could have planted something in
it; every path is quoted (here they hold spaces and quotes)."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from toolkit.sweeps import ssh_slots

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("papermill")

TRIAL = "0123abcd"
OTHER_UID = 54321  # a user of the worker who is not the login user
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make files of another user")


def bundle(trial_id: str = TRIAL) -> bytes:
    """What the slot pipes to the send script: a tar of the trial's folder."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        folder = tarfile.TarInfo(trial_id)
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        content = b'{"cells": []}'
        notebook = tarfile.TarInfo(f"{trial_id}/{ssh_slots.NOTEBOOK}")
        notebook.size = len(content)
        tar.addfile(notebook, io.BytesIO(content))
    return data.getvalue()


def send(home: Path, trial_id: str = TRIAL) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["sh", "-c", ssh_slots.send_script(trial_id)], cwd=home, input=bundle(trial_id), capture_output=True
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_trials_folder_is_private(tmp_path):
    sent = send(tmp_path)
    assert sent.returncode == 0, sent.stderr
    trials = tmp_path / ssh_slots.TRIALS_DIR
    assert mode(trials) == 0o700
    assert (trials / TRIAL / ssh_slots.NOTEBOOK).read_text() == '{"cells": []}'


def test_a_world_writable_trials_folder_of_the_user_is_made_private(tmp_path):
    trials = tmp_path / ssh_slots.TRIALS_DIR
    trials.mkdir()
    trials.chmod(0o1777)  # what the lab made before
    (trials / TRIAL).mkdir()  # a leftover of the same trial: replaced
    (trials / TRIAL / "stale.txt").write_text("old")
    sent = send(tmp_path)
    assert sent.returncode == 0, sent.stderr
    assert mode(trials) == 0o700
    assert sorted(p.name for p in (trials / TRIAL).iterdir()) == [ssh_slots.NOTEBOOK]


def test_a_symlinked_trials_folder_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    elsewhere.chmod(0o777)
    home = tmp_path / "home"
    home.mkdir()
    (home / ssh_slots.TRIALS_DIR).symlink_to(elsewhere)
    sent = send(home)
    assert sent.returncode != 0
    assert sent.stderr.decode().startswith(ssh_slots.REFUSED) and "is not a folder of" in sent.stderr.decode()
    assert list(elsewhere.iterdir()) == [] and mode(elsewhere) == 0o777


@as_root
def test_a_trials_folder_of_another_user_is_refused(tmp_path):
    trials = tmp_path / ssh_slots.TRIALS_DIR
    trials.mkdir(mode=0o777)
    os.chown(trials, OTHER_UID, OTHER_UID)
    sent = send(tmp_path)
    assert sent.returncode != 0 and "is not a folder of" in sent.stderr.decode()
    assert list(trials.iterdir()) == []


@as_root
def test_a_trials_folder_holding_another_users_files_is_refused(tmp_path):
    trials = tmp_path / ssh_slots.TRIALS_DIR
    trials.mkdir()
    trials.chmod(0o1777)
    planted = trials / TRIAL
    planted.mkdir(mode=0o777)
    os.chown(planted, OTHER_UID, OTHER_UID)  # pre-created while the folder was open to everyone
    sent = send(tmp_path)
    assert sent.returncode != 0 and "holds files of other users" in sent.stderr.decode()
    assert planted.is_dir() and list(planted.iterdir()) == []  # nothing unpacked into it


def test_the_trial_runs_with_quoted_paths_and_its_marker(tmp_path):
    """The run script, with the worker's paths replaced by paths holding spaces and quotes, and the venv's
    papermill: the environment file is read, the trial's variables arrive intact, the marker exists while the
    notebook runs (holding the shell's PID) and is gone after."""
    folder = tmp_path / "trials of 'ci'" / TRIAL
    folder.mkdir(parents=True)
    markers = tmp_path / "markers dir"
    markers.mkdir()
    env_file = tmp_path / "lab env"
    env_file.write_text("FROM_ENV_FILE=yes\n")
    seen = tmp_path / "seen.json"
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(
            "import json, os\n"
            "from pathlib import Path\n"
            f"marker = Path({str(markers / TRIAL)!r})\n"
            f"Path({str(seen)!r}).write_text(json.dumps({{'marker': marker.read_text().strip(), "
            "'env': dict(os.environ)}))\n"
        )
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, folder / ssh_slots.NOTEBOOK)
    (folder / ssh_slots.PARAMETERS).write_text("{}\n")
    script = ssh_slots.run_script(
        {"MLFLOW_RUN_ID": TRIAL, "ODD": "it's a $HOME; `x`"},
        str(folder),
        TRIAL,
        env_file=str(env_file),
        markers_dir=str(markers),
        papermill=str(Path(sys.executable).with_name("papermill")),
    )
    ran = subprocess.run(["sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    got = json.loads(seen.read_text())
    assert got["marker"].isdigit()
    assert got["env"]["ODD"] == "it's a $HOME; `x`" and got["env"]["FROM_ENV_FILE"] == "yes"
    assert got["env"]["LAB_TRIAL_DIR"] == got["env"]["LAB_NOTEBOOK_DIR"] == str(folder)
    assert not (markers / TRIAL).exists(), "the marker outlived the trial"
    assert (folder / ssh_slots.OUTPUT).is_file()


def test_what_cannot_be_a_trial_or_a_variable_is_refused():
    from toolkit.errors import LabError

    with pytest.raises(LabError, match="not a variable name"):
        ssh_slots.run_script({"A; rm -rf ~": "x"}, ".lab-trials/x", "x")
    assert not ssh_slots.TRIAL_ID.fullmatch("../x") and not ssh_slots.TRIAL_ID.fullmatch("a b")


def test_the_slots_runner_runs_each_trial_warm_in_its_folder_with_its_marker(tmp_path):
    """A slot's runner as a worker runs it (the runner script by sh, in a trials folder whose path holds spaces
    and quotes): the worker's environment file and the slot's variables reach the kernel, the trial's own
    variables too (but not the dispatcher's tracker address), the kernel works in the trial's folder, the marker
    holds the runner's PID while the trial runs and is gone after, the log comes back as events, and the second
    trial's kernel is the warm one."""
    import threading

    from toolkit.sweeps import slots

    trials = tmp_path / "trials of 'ci'"
    trials.mkdir()
    markers = tmp_path / "markers dir"
    markers.mkdir()
    env_file = tmp_path / "lab env"
    env_file.write_text("FROM_ENV_FILE=yes\nMLFLOW_TRACKING_URI=http://tracker-inside:5000\n")
    script = ssh_slots.runner_script(
        {"CUDA_VISIBLE_DEVICES": "1"}, env_file=str(env_file), trials_dir=str(trials), python=sys.executable
    )
    runner = slots.RunnerProcess(["sh", "-c", script], None, local=False)
    slot = ssh_slots.SshSlot("worker-1/0", access=None, host=None)  # type: ignore[arg-type] -- only its jobs' shape
    try:
        for number, trial in enumerate(["aaaa1111", "bbbb2222"]):
            folder = trials / trial
            folder.mkdir()
            notebook = nbformat.v4.new_notebook()
            notebook.cells = [
                nbformat.v4.new_code_cell(
                    "import json, os\nfrom pathlib import Path\n"
                    f"marker = Path({str(markers / trial)!r}).read_text().strip()\n"
                    "Path('seen.json').write_text(json.dumps({'marker': marker, 'cwd': os.getcwd(), "
                    "'env': dict(os.environ)}))\n"
                    f"print('hello from trial {number}')"
                )
            ]
            notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
            nbformat.write(notebook, folder / ssh_slots.NOTEBOOK)
            job = slots.Job(
                folder / ssh_slots.NOTEBOOK,
                tmp_path / "out.ipynb",
                {},
                {"MLFLOW_RUN_ID": trial, "ODD": "it's a $HOME; `x`", "MLFLOW_TRACKING_URI": "http://laptop:5000"},
                log=tmp_path / f"{trial}.log",
            )
            message = {**slot._remote_job(job, trial), "marker": str(markers / trial)}
            outcome, usable = slots.drive(runner, job, threading.Event(), message)
            assert (outcome.kind, usable) == ("ok", True), outcome.error
            seen = json.loads((folder / "seen.json").read_text())
            assert seen["cwd"] == str(folder)
            assert seen["marker"] == str(runner.process.pid)  # sh exec'd the runner: its PID
            assert not (markers / trial).exists(), "the marker outlived the trial"
            env = seen["env"]
            assert env["ODD"] == "it's a $HOME; `x`" and env["FROM_ENV_FILE"] == "yes"
            assert env["MLFLOW_RUN_ID"] == trial and env["CUDA_VISIBLE_DEVICES"] == "1"
            assert env["MLFLOW_TRACKING_URI"] == "http://tracker-inside:5000"  # the worker's own view
            assert (folder / ssh_slots.OUTPUT).is_file()
            assert f"hello from trial {number}" in (tmp_path / f"{trial}.log").read_text()
            assert runner.warm_start == (number == 1)
    finally:
        runner.close()
    assert runner.process.returncode == 0


def test_a_worker_trial_works_among_copies_of_the_notebooks_neighbours(tmp_path):
    """Issue 25 item 7 on workers: the tar a slot sends (`write_trial`), unpacked by the send script and run by the
    slot's runner as a worker runs them. The notebook reads data.csv and sub/more.txt beside it, imports helpers.py,
    reads the researcher's own parameters.yaml and writes model.txt: all in the trial's own folder, never in the
    notebook's; caches, out/ and hidden files stay behind; a linked file arrives as a copy."""
    import threading

    from toolkit.sweeps import slots

    nb = tmp_path / "nb"
    (nb / "sub").mkdir(parents=True)
    (nb / "out").mkdir()
    (nb / "data.csv").write_text("a,b\n1,2\n")
    (nb / "helpers.py").write_text("ANSWER = 42\n")
    (nb / "parameters.yaml").write_text("mine: true\n")  # the researcher's, not the lab's
    (nb / "sub" / "more.txt").write_text("more\n")
    (nb / "out" / "old.ipynb").write_text("{}")
    (nb / ".secret").write_text("stays here")
    (nb / "linked.csv").symlink_to(nb / "data.csv")
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("lr = 0.0")
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [
        parameters,
        nbformat.v4.new_code_cell(
            "import json, os, helpers\nfrom pathlib import Path\n"
            "Path('model.txt').write_text(str(lr))\n"
            "Path('seen.json').write_text(json.dumps({'cwd': os.getcwd(), 'answer': helpers.ANSWER, "
            "'data': open('data.csv').read(), 'linked': open('linked.csv').read(), "
            "'more': open('sub/more.txt').read(), 'mine': open('parameters.yaml').read(), "
            "'trial_dir': os.environ['LAB_TRIAL_DIR'], 'notebook_dir': os.environ['LAB_NOTEBOOK_DIR']}))\n"
        ),
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, nb / "train.ipynb")
    home = tmp_path / "home of 'ci'"
    home.mkdir()
    job = slots.Job(nb / "train.ipynb", tmp_path / "out.ipynb", {"lr": 0.5}, {"MLFLOW_RUN_ID": TRIAL})
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w", dereference=True) as tar:
        ssh_slots.write_trial(tar, TRIAL, job)
    sent = subprocess.run(
        ["sh", "-c", ssh_slots.send_script(TRIAL)], cwd=home, input=data.getvalue(), capture_output=True
    )
    assert sent.returncode == 0, sent.stderr
    folder = home / ssh_slots.TRIALS_DIR / TRIAL
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == sorted(
        [ssh_slots.NOTEBOOK, ssh_slots.PARAMETERS, "data.csv", "helpers.py", "linked.csv", "parameters.yaml",
         "sub", "sub/more.txt", "train.ipynb"]
    )  # fmt: skip
    assert not (folder / "linked.csv").is_symlink()
    trials = str(home / ssh_slots.TRIALS_DIR)
    script = ssh_slots.runner_script({}, env_file=str(tmp_path / "none"), trials_dir=trials, python=sys.executable)
    runner = slots.RunnerProcess(["sh", "-c", script], None, local=False)
    slot = ssh_slots.SshSlot("worker-1/0", access=None, host=None)  # type: ignore[arg-type] -- only its jobs' shape
    try:
        message = {**slot._remote_job(job, TRIAL), "marker": str(tmp_path / "marker")}
        outcome, usable = slots.drive(runner, job, threading.Event(), message)
        assert (outcome.kind, usable) == ("ok", True), outcome.error
    finally:
        runner.close()
    seen = json.loads((folder / "seen.json").read_text())
    assert seen["cwd"] == seen["trial_dir"] == seen["notebook_dir"] == str(folder)
    assert (seen["answer"], seen["data"], seen["linked"], seen["more"]) == (42, "a,b\n1,2\n", "a,b\n1,2\n", "more\n")
    assert seen["mine"] == "mine: true\n"
    assert (folder / "model.txt").read_text() == "0.5"
    assert not (nb / "model.txt").exists() and not (nb / "seen.json").exists()


def test_a_notebook_folder_too_big_for_the_workers_is_refused_before_the_first_trial(tmp_path):
    from toolkit.errors import LabError
    from toolkit.sweeps import workdir

    (tmp_path / "train.ipynb").write_text("{}")
    (tmp_path / "big.bin").write_bytes(b"x" * 2048)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "huge.bin").write_bytes(b"x" * 4096)  # out/ stays behind: not counted
    step = workdir.FolderStep(tmp_path)
    assert [p.name for p in workdir.sent(tmp_path, limit=4096)] == ["big.bin", "train.ipynb"]
    with pytest.raises(LabError, match=r"holds 0\.0 MB, more than .*biggest: big\.bin"):
        workdir.sent(tmp_path, limit=1024)
    step.check()  # within the real limit
