"""`lab up --target ssh` on 1 tracker + 2 fresh VM-like hosts: the first up, then an up with no changes.

Run as root: .venv/bin/python benchmarks/ssh_up.py [--again 2] [--compare REV]. Brings up its own hosts (bridge
br-labbench, 10.205.0.x, the test harness's cached base) and always tears them down. Prints each run's wall time and
the playbook's slowest tasks. `--compare REV` first runs the same on fresh hosts with the toolkit and playbooks of
git revision REV (a worktree of it), then with this checkout's: before and after in one sitting, on one machine.
(The harness shares one pip cache among its hosts, warm after a first run; uv's cache lives on each host, so it
starts cold. `--cold` leaves pip's out too: every fresh host downloads what it installs, as a new VM does.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.hosts.vmhosts import HostPool

LAB = Path(sys.executable).with_name("lab")


def up(stack: Path, home: Path, checkout: Path | None) -> tuple[float, dict]:
    started = time.monotonic()
    env = {**os.environ, "LAB_HOME": str(home)}
    command = [str(LAB)]
    if checkout is not None:  # that revision's toolkit (and, beside it, its playbooks); run there, as -m puts the
        command = [sys.executable, "-m", "toolkit"]  # current folder first on the path
        env["PYTHONPATH"] = str(checkout)
    ran = subprocess.run(
        [*command, "up", "--json", "--stack", str(stack)],
        capture_output=True,
        text=True,
        env=env,
        cwd=checkout,
        check=False,
    )
    seconds = time.monotonic() - started
    if ran.returncode != 0:
        raise SystemExit(f"lab up failed ({ran.returncode}): {ran.stderr[-2000:]}")
    return seconds, json.loads(ran.stdout)


def slowest(document: dict) -> None:
    for task in document["configure"].get("slowest_tasks", [])[:6]:
        print(f"    {task['seconds']:6.1f} s  {task['task']}")
    stages = document.get("stages_s") or {}
    if stages:
        print("    stages: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in stages.items()))


def bench(pool: HostPool, work: Path, again: int, checkout: Path | None) -> None:
    pool.down()
    tracker, *workers = pool.up(3)
    stack = work / "Pulumi.bench.yaml"
    stack.write_text(
        "config:\n  lab:target: ssh\n"
        f"  lab:trackerHost: {tracker.ip}\n  lab:workerHosts: [{', '.join(w.ip for w in workers)}]\n"
        f"  lab:sshUser: ci\n  lab:sshPublicKeyPath: {pool.key}.pub\n  lab:idleMinutes: 0\n"
    )
    (work / "home").mkdir()
    first, document = up(stack, work / "home", checkout)
    print(f"first up (1 tracker + 2 workers): {first:.1f} s (configure {document['configure']['seconds']} s)")
    slowest(document)
    for index in range(again):
        seconds, document = up(stack, work / "home", checkout)
        changed = sum(h["changed"] for h in document["configure"]["hosts"].values())
        configure = document["configure"]["seconds"]
        print(f"no-change up #{index + 1}: {seconds:.1f} s (configure {configure} s), {changed} tasks changed")
        for name, host in document["configure"]["hosts"].items():
            if host["changed_tasks"]:
                print(f"    changed on {name}: {', '.join(host['changed_tasks'])}")
        slowest(document)


def worktree(root: Path, rev: str, where: Path) -> Path:
    """A worktree of `rev`, checked to be the toolkit `python -m toolkit` runs there."""
    subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(where), rev], check=True)
    found = subprocess.run(
        [sys.executable, "-c", "import toolkit; print(toolkit.__file__)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(where)},
        cwd=where,
        check=True,
    ).stdout.strip()
    if not found.startswith(str(where)):
        raise SystemExit(f"{rev}: python -m toolkit would run {found}, not the worktree's")
    return where


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--again", type=int, default=2, help="no-change ups after the first")
    parser.add_argument("--top", default=os.environ.get("LAB_TEST_HOSTS_TOP", "/var/tmp/lab-test-hosts"))
    parser.add_argument("--compare", metavar="REV", help="run git revision REV's toolkit first, then the other's")
    parser.add_argument("--after", metavar="REV", help="with --compare: this revision second (default: this checkout)")
    parser.add_argument(
        "--cold", action="store_true", help="no pip cache shared by the hosts: each downloads, as a new VM does"
    )
    args = parser.parse_args()
    pool = HostPool(top=args.top, bridge="br-labbench", net="10.205.0", pip_cache=not args.cold)
    root = Path(__file__).resolve().parents[1]
    work = Path(tempfile.mkdtemp(prefix="lab-bench-ssh-"))
    sides = [("this checkout", None)]
    try:
        pool.build_base()
        if args.compare:
            sides = [(args.compare, worktree(root, args.compare, work / "before-tree"))]
            after = worktree(root, args.after, work / "after-tree") if args.after else None
            sides.append((args.after or "this checkout", after))
        for index, (name, checkout) in enumerate(sides):
            print(f"== {name}")
            (work / str(index)).mkdir()
            bench(pool, work / str(index), args.again, checkout)
    finally:
        pool.down()
        for _, checkout in sides:
            if checkout is not None:
                subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(checkout)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
