"""`lab up --local`: time until both services answer, and what they hold in memory.

Run: .venv/bin/python benchmarks/local_up.py [--rounds 3]. Uses a temporary LAB_HOME and free ports.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

LAB = Path(sys.executable).with_name("lab")


def free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def tree_rss_mib(pid: int) -> float:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    home = Path(tempfile.mkdtemp(prefix="lab-bench-"))
    env = {**os.environ, "LAB_HOME": str(home), "LAB_STACK": "bench"}
    times, mlflow_mib, jupyter_mib = [], [], []
    try:
        for _ in range(rounds):
            start = time.perf_counter()
            subprocess.run(
                [str(LAB), "up", "--local", "--port", free_port(), "--jupyter-port", free_port()],
                check=True,
                capture_output=True,
                env=env,
            )
            times.append(time.perf_counter() - start)
            time.sleep(3)  # let the servers settle before measuring memory
            status = json.loads(
                subprocess.run(
                    [str(LAB), "status", "--local", "--json"], check=True, capture_output=True, env=env, text=True
                ).stdout
            )
            mlflow_mib.append(tree_rss_mib(status["components"]["mlflow"]["pid"]))
            jupyter_mib.append(tree_rss_mib(status["components"]["jupyter"]["pid"]))
            subprocess.run([str(LAB), "down", "--local"], check=True, capture_output=True, env=env)
    finally:
        subprocess.run([str(LAB), "down", "--local", "--force"], env=env, capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)
    print(f"lab up --local, both answering: median {statistics.median(times):.1f} s {[round(t, 1) for t in times]}")
    print(f"MLflow tracker (server + worker) RSS: median {statistics.median(mlflow_mib):.0f} MiB")
    print(f"JupyterLab RSS: median {statistics.median(jupyter_mib):.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
