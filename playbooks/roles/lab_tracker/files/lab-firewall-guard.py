#!/usr/bin/python3
"""lab-firewall-guard: MLflow (unauthenticated) never serves without the tracker's firewall, nftables table inet lab.

  lab-firewall-guard --check --port 5000
      exit 0 when the table is loaded and its input chain drops everyone's TCP to MLflow's port (the workers'
      accept rule comes before it); else exit 1 and say why. MLflow's unit runs it before MLflow starts
      (ExecStartPre), the role's verify step after every `lab up`.

  lab-firewall-guard --port 5000 --interval 2
      watch (lab-firewall-guard.service, bound to lab-mlflow.service): every --interval seconds the same check.
      When it fails (the table deleted, its rules flushed, or everything gone with another firewall's
      `flush ruleset`, such as a restart of Debian's nftables.service), restore the lab's own rules by reloading
      lab-firewall.service (it loads /etc/lab/firewall.nft, validated when written, in one transaction) and
      check again. If the rule is still not there, stop lab-mlflow.service: fail closed. Each event is one line
      in the journal (`journalctl -u lab-firewall-guard`).

Restoring first keeps sweeps running through another tool's firewall reload; stopping when it cannot restore
means MLflow is never left open. Python 3 standard library only (it runs with the system's python3).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

FIREWALL_UNIT = "lab-firewall.service"
MLFLOW_UNIT = "lab-mlflow.service"
# Statements a drop rule may carry besides its port match (a counter someone added is still the rule).
NEUTRAL = ("counter", "log")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def covers(right: Any, port: int) -> bool:
    """Whether the right-hand side of a `tcp dport` match (a port, a set, a range) includes `port`."""
    if isinstance(right, int):
        return right == port
    if isinstance(right, dict):
        if "set" in right:
            return any(covers(element, port) for element in right["set"])
        if "range" in right:
            low, high = right["range"]
            return isinstance(low, int) and isinstance(high, int) and low <= port <= high
    return False


def drops_everyone(expressions: list[dict[str, Any]], port: int) -> bool:
    """A rule `tcp dport <port or a set with it> drop`, with no condition on who sends."""
    if not expressions or "drop" not in expressions[-1]:
        return False
    matches = [e["match"] for e in expressions[:-1] if "match" in e]
    others = [e for e in expressions[:-1] if "match" not in e and not any(key in e for key in NEUTRAL)]
    if len(matches) != 1 or others:
        return False
    match = matches[0]
    return (
        match.get("left") == {"payload": {"protocol": "tcp", "field": "dport"}}
        and match.get("op") in ("==", "in")
        and covers(match.get("right"), port)
    )


def problem(port: int) -> str | None:
    """Why MLflow's port is not protected now, or None when it is."""
    try:
        listed = subprocess.run(
            ["nft", "-j", "list", "table", "inet", "lab"], capture_output=True, text=True, timeout=15, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nft cannot be asked ({exc})"
    if listed.returncode != 0:
        return "the table inet lab is not loaded"
    try:
        items = json.loads(listed.stdout)["nftables"]
    except (ValueError, KeyError, TypeError):
        return "nft's answer about the table inet lab cannot be read"
    inputs = {i["chain"].get("name") for i in items if "chain" in i and i["chain"].get("hook") == "input"}
    if not inputs:
        return "the table inet lab has no input chain"
    for item in items:
        rule = item.get("rule")
        if rule and rule.get("chain") in inputs and drops_everyone(rule.get("expr") or [], port):
            return None
    return f"the table inet lab does not drop others' connections to port {port} (MLflow)"


def systemctl(*args: str) -> tuple[bool, str]:
    try:
        ran = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return ran.returncode == 0, (ran.stderr.strip().splitlines() or [""])[-1]


def guard_once(port: int) -> str:
    """One round: 'ok', 'restored' or 'stopped' (MLflow)."""
    why = problem(port)
    if why is None:
        return "ok"
    reloaded, said = systemctl("reload", FIREWALL_UNIT)
    still = problem(port)
    if still is None:
        say(f"{why}: restored the lab's rules (reloaded {FIREWALL_UNIT})")
        return "restored"
    attempt = f"reloading {FIREWALL_UNIT} did not bring it back" + ("" if reloaded else f" ({said})")
    say(f"stopping {MLFLOW_UNIT}: {still}, and {attempt}; run `lab up` to configure the tracker again")
    systemctl("--no-block", "stop", MLFLOW_UNIT)  # this guard is part of MLflow's unit: it stops with it
    return "stopped"


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--port", type=int, required=True, help="MLflow's port")
    cli.add_argument("--check", action="store_true", help="check once and exit (0: protected, 1: not)")
    cli.add_argument("--interval", type=float, default=2.0, help="seconds between checks while watching")
    args = cli.parse_args(argv)
    if args.check:
        why = problem(args.port)
        if why:
            say(f"MLflow must not start: {why}")
            return 1
        return 0
    say(f"watching the table inet lab for MLflow's port {args.port} every {args.interval:g} s")
    while True:  # until systemd stops it (with MLflow, after a stop above too)
        guard_once(args.port)
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
