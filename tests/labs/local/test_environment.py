"""What the local lab's processes see of the caller's environment: the allow-list (toolkit.environment), never
the caller's secrets, and never the Jupyter token (JupyterLab reads it from its 0600 config file)."""

from __future__ import annotations

import json
import stat
import time
import urllib.request
from pathlib import Path

import pytest

from tests.labs.local.conftest import up_args

mlflow = pytest.importorskip("mlflow")
nbformat = pytest.importorskip("nbformat")
psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.slow  # starts labs or services: not in `pytest -m 'not slow'`

# What a researcher's shell may hold: none of it may reach MLflow, JupyterLab or a kernel.
SECRETS = {
    "PULUMI_CONFIG_PASSPHRASE": "secret-xyz",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-abc",
    "GITHUB_TOKEN": "ghp-secret-123",
    "JUPYTER_TOKEN": "callers-own-jupyter-token",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-password-456",
}
# What must pass: an allow-listed variable, and one the user names in LAB_PASS_ENV.
PASSED = {"OMP_NUM_THREADS": "3", "MY_KERNEL_KEY": "asked-for", "LAB_PASS_ENV": "MY_KERNEL_KEY"}


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def assert_clean(env: dict[str, str], what: str, token: str) -> None:
    leaked = sorted(name for name in SECRETS if name in env)
    assert not leaked, f"{what} got the caller's {leaked}"
    values = "\n".join(env.values())
    assert not [v for v in SECRETS.values() if v in values], f"{what} got a secret's value"
    assert token not in values, f"{what} has the lab's Jupyter token in its environment"


def env_notebook(path: Path) -> Path:
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell('out = ""\nx = 0.5')
    parameters.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "import json, os\n"
        "import mlflow\n"
        "from pathlib import Path\n"
        "Path(out).write_text(json.dumps(dict(os.environ)))\n"
        "with mlflow.start_run():\n"
        "    mlflow.log_metric('val_loss', x)\n"
    )
    notebook.cells = [parameters, body]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
    return path


def test_the_allow_list():
    from toolkit import environment

    source = {**SECRETS, **PASSED, "PATH": "/bin", "LC_ALL": "C", "CUDA_VISIBLE_DEVICES": "0", "HF_TOKEN": "hf"}
    source["GOOGLE_APPLICATION_CREDENTIALS"] = "/keys/sa.json"
    kernels = environment.for_kernels({"MLFLOW_RUN_ID": "r1"}, source=source)
    assert kernels == {
        "PATH": "/bin",
        "LC_ALL": "C",
        "CUDA_VISIBLE_DEVICES": "0",
        "OMP_NUM_THREADS": "3",
        "MY_KERNEL_KEY": "asked-for",
        "LAB_PASS_ENV": "MY_KERNEL_KEY",
        "MLFLOW_RUN_ID": "r1",
    }
    tracker = environment.for_tracker(source)
    assert tracker["GOOGLE_APPLICATION_CREDENTIALS"] == "/keys/sa.json"  # only MLflow writes to the bucket
    assert not set(SECRETS) & set(tracker)


def test_services_and_kernels_get_no_secrets(lab, ports, state, tmp_path):
    secret_env = {**SECRETS, **PASSED}
    ran = lab(
        *up_args(ports, jupyter=True),
        env=secret_env,
    )
    assert ran.code == 0, ran.err
    token_file = state / "secrets" / "jupyter_token"
    token = token_file.read_text().strip()
    status = json.loads(lab("status", "--local", "--json").out)
    pids = {name: c["pid"] for name, c in status["components"].items()}

    # MLflow and JupyterLab, and every process they started (MLflow's workers)
    for name, pid in pids.items():
        for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            assert_clean(environ_of(process.pid), f"{name} ({process.pid}: {' '.join(process.cmdline())[:60]})", token)
    assert environ_of(pids["jupyter"])["OMP_NUM_THREADS"] == "3"
    # the token is read from a 0600 file by JupyterLab's own 0600 config
    for secret_file in (token_file, state / "secrets" / "jupyter_server_config.py"):
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600, secret_file
    assert token not in (state / "secrets" / "jupyter_server_config.py").read_text()

    # a kernel JupyterLab starts (what a notebook opened in the browser runs in)
    before = {p.pid for p in psutil.Process(pids["jupyter"]).children(recursive=True)}
    request = urllib.request.Request(
        f"http://127.0.0.1:{ports['jupyter']}/api/kernels",
        data=b'{"name": "python3"}',
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 201
    deadline = time.monotonic() + 30
    kernels: list[int] = []
    while not kernels and time.monotonic() < deadline:
        kernels = [
            p.pid
            for p in psutil.Process(pids["jupyter"]).children(recursive=True)
            if p.pid not in before and "ipykernel_launcher" in " ".join(p.cmdline())
        ]
        time.sleep(0.2)
    assert kernels, "JupyterLab started no kernel"
    kernel_env = environ_of(kernels[0])
    assert_clean(kernel_env, "a kernel started by JupyterLab", token)
    assert kernel_env["MY_KERNEL_KEY"] == "asked-for"

    # a trial's kernel (papermill's), started by `lab dispatch`
    dump = tmp_path / "trial-env.json"
    space = tmp_path / "space.yml"
    space.write_text(
        "objective: {metric: val_loss, direction: minimize}\n"
        "params:\n  x: {type: float, low: 0.0, high: 1.0}\n"
        f"fixed: {{out: {json.dumps(str(dump))}}}\n"
        "sampler: {name: random, seed: 1}\n"
    )
    notebook = env_notebook(tmp_path / "env.ipynb")
    output = str(tmp_path / "out/{trial}.ipynb")
    ran = lab(
        "dispatch", str(notebook), "--space", str(space), "--trials", "1", "--local", "--json", "--output", output,
        env=secret_env,
        timeout=300,
    )  # fmt: skip
    assert ran.code == 0, ran.err
    trial_env = json.loads(dump.read_text())
    assert_clean(trial_env, "a trial's kernel", token)
    assert trial_env["MLFLOW_RUN_ID"] and trial_env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{ports['mlflow']}"
    assert trial_env["OMP_NUM_THREADS"] == "3" and trial_env["MY_KERNEL_KEY"] == "asked-for"
    assert lab("down", "--local", "--force").code == 0
