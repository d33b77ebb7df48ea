"""An experiment's environment (scikit-learn, pandas) onto a fresh VM-like worker: cold, again with uv's cache warm,
and found.

Run as root: .venv/bin/python benchmarks/worker_env.py. Brings up one fresh host of its own (bridge br-labbench,
10.205.0.x, the test harness's cached base; no pip cache shared with other hosts) and always tears it down. The host
gets the lab's venv as lab_base and lab_worker make it (python3 -m venv, uv by pip, mlflow-skinny and ipykernel by
uv, the toolkit copied, worker.json naming the envs folder and its uv cache), then the sweep's environment step
(toolkit.envs.sweep) runs on it three times as a sweep runs it, as the login user over SSH:
  cold   - an empty uv cache: everything downloaded, then installed;
  warm   - the environment's folder removed, uv's cache kept (another environment sharing the packages, or a worker
           whose envs folder was lost): installed from the cache;
  found  - the environment there and verified: nothing installed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.hosts.vmhosts import Host, HostPool
from toolkit.envs import spec as envspec
from toolkit.envs.sweep import EnvironmentStep

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = "scikit-learn\npandas\n"
UV_VERSION = "0.13.9"
MLFLOW = "mlflow-skinny==3.17.2"
SETUP = f"""
set -e
python3 -m venv /opt/lab/venv
/opt/lab/venv/bin/python -m pip install -q --disable-pip-version-check uv=={UV_VERSION}
UV_SYSTEM_CERTS=1 UV_NO_PROGRESS=1 UV_CACHE_DIR=/var/cache/lab/uv /opt/lab/venv/bin/uv pip install -q \\
  --python /opt/lab/venv/bin/python {MLFLOW} ipykernel
mkdir -p /opt/lab/lib /etc/lab /var/lib/lab/envs /var/cache/lab/envs-uv
echo /opt/lab/lib > "$(/opt/lab/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/lab.pth"
chown ci:ci /var/lib/lab/envs /var/cache/lab/envs-uv
echo '{{"envs_dir": "/var/lib/lab/envs", "envs_cache": "/var/cache/lab/envs-uv"}}' > /etc/lab/worker.json
"""


@dataclass
class PoolHost:
    """The worker as the sweep's step sees it (toolkit.sweeps.prepare.HostCommands), through the harness's ssh."""

    pool: HostPool
    host: Host
    name: str = "c1"
    local: bool = False
    python: str = "/opt/lab/venv/bin/python"

    def run(self, argv: Sequence[str], *, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        import shlex

        return self.pool.ssh(self.host, shlex.join(argv), check=False, timeout=timeout or 3600, user="ci")


def timed(step: EnvironmentStep, host: PoolHost) -> tuple[float, str]:
    started = time.monotonic()
    prepared = step.on_host(host)
    return time.monotonic() - started, prepared.tags["lab.env"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", default=os.environ.get("LAB_TEST_HOSTS_TOP", "/var/tmp/lab-test-hosts"))
    args = parser.parse_args()
    pool = HostPool(top=args.top, bridge="br-labbench", net="10.205.0", pip_cache=False)
    folder = Path(tempfile.mkdtemp(prefix="lab-bench-env-"))
    (folder / "requirements.txt").write_text(REQUIREMENTS)
    step = EnvironmentStep(envspec.find(folder))  # type: ignore[arg-type]
    try:
        pool.down()
        [host] = pool.up(1)
        started = time.monotonic()
        pool.ssh(host, SETUP, timeout=900)
        tar = subprocess.Popen(
            ["tar", "-C", str(ROOT), "--exclude=__pycache__", "-cf", "-", "toolkit"], stdout=subprocess.PIPE
        )
        subprocess.run([*host.ssh_command("tar -C /opt/lab/lib -xf -", user="root")], stdin=tar.stdout, check=True)
        tar.wait()
        print(f"the lab's venv on a fresh host (pip: uv; uv: {MLFLOW}, ipykernel): {time.monotonic() - started:.1f} s")
        worker = PoolHost(pool, host)
        cold, digest = timed(step, worker)
        cache = pool.ssh(host, "du -sm /var/cache/lab/envs-uv | cut -f1", user="root").stdout.strip()
        venv = pool.ssh(host, f"du -sm /var/lib/lab/envs/{digest} | cut -f1", user="root").stdout.strip()
        print(f"cold  (empty uv cache): {cold:6.1f} s   environment {digest[:12]}: {venv} MB, uv cache {cache} MB")
        pool.ssh(host, f"rm -rf /var/lib/lab/envs/{digest}", user="root")
        warm, _ = timed(step, worker)
        print(f"warm  (uv cache kept):  {warm:6.1f} s")
        found, _ = timed(step, worker)
        print(f"found (already there):  {found:6.1f} s")
        versions = pool.ssh(
            host,
            f"/var/lib/lab/envs/{digest}/venv/bin/python -c "
            "'import sklearn, pandas, mlflow; print(sklearn.__version__, pandas.__version__, mlflow.__version__)'",
        ).stdout.strip()
        print(
            json.dumps(
                {
                    "cold_s": round(cold, 1),
                    "warm_s": round(warm, 1),
                    "found_s": round(found, 1),
                    "sklearn pandas mlflow": versions,
                }
            )
        )
    finally:
        pool.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
