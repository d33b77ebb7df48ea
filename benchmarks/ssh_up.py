"""`lab up --target ssh` on 1 tracker + 2 fresh VM-like hosts: the first up, then an up with no changes.

Run as root: .venv/bin/python benchmarks/ssh_up.py [--again 2] [--compare REV]. Brings up its own hosts (bridge
br-labbench, 10.205.0.x, the test harness's cached base) and always tears them down. Prints each run's wall time and
the playbook's slowest tasks. `--compare REV` first runs the same on fresh hosts with the toolkit and playbooks of
git revision REV (a worktree of it), then with this checkout's: before and after in one sitting, on one machine.
(The harness shares one pip cache among its hosts; uv's cache lives on each host, so it starts cold.)
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
    if checkout is not None:  # that revision's toolkit (and, beside it, its playbooks)
        command = [sys.executable, "-m", "toolkit"]
        env["PYTHONPATH"] = str(checkout)
    ran = subprocess.run(
        [*command, "up", "--json", "--stack", str(stack)],
        capture_output=True,
        text=True,
        env=env,
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--again", type=int, default=2, help="no-change ups after the first")
    parser.add_argument("--top", default=os.environ.get("LAB_TEST_HOSTS_TOP", "/var/tmp/lab-test-hosts"))
    parser.add_argument("--compare", metavar="REV", help="run git revision REV's toolkit first, then this checkout's")
    args = parser.parse_args()
    pool = HostPool(top=args.top, bridge="br-labbench", net="10.205.0")
    root = Path(__file__).resolve().parents[1]
    work = Path(tempfile.mkdtemp(prefix="lab-bench-ssh-"))
    try:
        pool.build_base()
        if args.compare:
            old = work / "old"
            subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(old), args.compare], check=True)
            try:
                print(f"== before: {args.compare}")
                (work / "before").mkdir()
                bench(pool, work / "before", args.again, old)
            finally:
                subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(old)], check=False)
            print("== after: this checkout")
            (work / "after").mkdir()
            bench(pool, work / "after", args.again, None)
        else:
            bench(pool, work, args.again, None)
    finally:
        pool.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
