"""How fast `lab` starts: median wall time of `lab --help` against a bare `import typer`.

Targets: `lab --help` under 0.3 s on the CI machine (issue 2), and within 1.5x of the bare typer import
(issue 13: only the skeleton loads; each command's module is imported when that command runs).
Run: .venv/bin/python benchmarks/cli_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

LAB = Path(sys.executable).with_name("lab")
TARGET_SECONDS = 0.3
TARGET_RATIO = 1.5


def median_wall(argv: list[str], runs: int) -> float:
    subprocess.run(argv, capture_output=True, check=True)  # warm the page cache and .pyc files
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    runs = parser.parse_args().runs
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import typer'": [sys.executable, "-c", "import typer"],
        "lab --help": [str(LAB), "--help"],
        "lab --version": [str(LAB), "--version"],
        "lab up --help": [str(LAB), "up", "--help"],
        "lab config validate": [str(LAB), "config", "validate"],
    }
    medians = {name: median_wall(argv, runs) for name, argv in cases.items()}
    for name, seconds in medians.items():
        print(f"{name:<28} median {seconds * 1000:7.1f} ms over {runs} runs")
    ratio = medians["lab --help"] / medians["python -c 'import typer'"]
    print(f"{'lab --help / import typer':<28} ratio  {ratio:7.2f}x")
    ok = medians["lab --help"] < TARGET_SECONDS and ratio <= TARGET_RATIO
    print(f"targets: < {TARGET_SECONDS} s and <= {TARGET_RATIO:g}x: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
