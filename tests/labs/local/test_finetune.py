"""The GPU template notebook, on a CPU with tiny settings: pre-train, fine-tune, checkpoints, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.labs.local.conftest import up_args

torch = pytest.importorskip("torch", reason="the fine-tune template needs PyTorch (pip install torch)")
mlflow = pytest.importorskip("mlflow")

pytestmark = pytest.mark.slow  # starts labs or services: not in `pytest -m 'not slow'`

NOTEBOOK = ROOT / "experiments" / "finetune" / "finetune.ipynb"


def test_pretrain_finetune_checkpoint_and_resume(lab, ports, tmp_path):
    assert lab(*up_args(ports)).code == 0
    uri = f"http://127.0.0.1:{ports['mlflow']}"
    space = tmp_path / "tiny.yml"
    space.write_text(
        "objective: {metric: val_loss, direction: minimize}\n"
        "params:\n  lr_finetune: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}\n"
        "fixed: {epochs_pretrain: 1, epochs_finetune: 1, width: 16, num_workers: 2}\n"
        "sampler: {name: random, seed: 3}\n"
    )
    ran = lab(
        "dispatch",
        str(NOTEBOOK),
        "--space",
        str(space),
        "--trials",
        "1",
        "--study",
        "ft",
        "--local",
        "--json",
        "--output",
        str(tmp_path / "out/{trial}.ipynb"),
        timeout=600,
    )
    assert ran.code == 0, ran.err
    (trial,) = json.loads(ran.out)["trials"]
    assert trial["state"] == "COMPLETE", trial["error"]
    client = mlflow.MlflowClient(uri)
    run_id = trial["run_id"]
    newest = {"checkpoints/step-0000000002.json", "checkpoints/step-0000000002.pt"}  # toolkit.checkpoints, epoch 2
    assert newest <= {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert [m.step for m in client.get_metric_history(run_id, "pretrain_val_loss")] == [1]
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [2]
    for metric in ("train_top1", "train_top5", "val_top1", "val_top5"):
        assert 0.0 <= client.get_run(run_id).data.metrics[metric] <= 1.0

    # The same run again, with one more fine-tuning epoch: it resumes after the checkpoint.
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_RUN_ID": run_id}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            str(NOTEBOOK),
            str(tmp_path / "resumed.ipynb"),
            "--cwd",
            str(NOTEBOOK.parent),
            "-p",
            "epochs_pretrain",
            "1",
            "-p",
            "epochs_finetune",
            "2",
            "-p",
            "width",
            "16",
            "-p",
            "lr_finetune",
            str(trial["params"]["lr_finetune"]),
            "-p",
            "seed",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run = client.get_run(run_id)
    assert run.data.tags["resumed_from"] == "finetune epoch 0"
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [2, 3]
    assert [m.step for m in client.get_metric_history(run_id, "pretrain_val_loss")] == [1], "not trained again"
    assert lab("down", "--local").code == 0
