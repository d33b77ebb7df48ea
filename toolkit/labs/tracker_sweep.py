"""A detached sweep as the tracker runs it (`lab-sweep@NAME.service`: `python -m toolkit.labs.tracker_sweep --data D
--name NAME`): the workers' slots as the tracker reaches them, its own MLflow and Optuna storage proxy, and on gcp the
Reviver that starts again the workers GCP stopped. The sweep itself is `toolkit.sweeps.service.run`.

The tracker role writes what this needs into /etc/lab/tracker.json: MLflow's address and port, the Optuna proxy's
port, and the workers (name, internal address, login user) with the tracker's own SSH key and a known-hosts file
written from the workers' host keys (so the tracker never trusts a key on first use).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from toolkit.errors import LabError
from toolkit.sweeps import service

FACTS = Path("/etc/lab/tracker.json")


def facts(path: Path = FACTS) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LabError(
            f"cannot read {path} ({type(exc).__name__})", hint="run `lab up` to configure the tracker"
        ) from None


def place(doc: dict[str, Any], exits: contextlib.ExitStack, path: Path = FACTS) -> Any:
    """The place of a sweep run here: a `tracker` one from the tracker's facts, any other as the service has it."""
    if doc["kind"] != "tracker":
        return service.place_of(doc, exits)
    return tracker_place(doc, path)


def tracker_place(doc: dict[str, Any], path: Path = FACTS) -> Any:
    from toolkit.hosts import ssh as remote
    from toolkit.sweeps import slots, ssh_slots
    from toolkit.sweeps.place import SweepPlace

    known = facts(path)
    workers = known.get("workers") or []
    if not workers:
        raise LabError("the tracker knows no workers", hint="list them (lab:workerHosts / lab:workers) and `lab up`")
    users = {str(w["user"]) for w in workers}
    if len(users) != 1:
        raise LabError(f"the workers have different login users ({', '.join(sorted(users))})")
    access = remote.Access(
        user=users.pop(), key=Path(known["ssh_key"]), known_hosts=Path(known["known_hosts"]), strict=True
    )
    hosts = [remote.Host(str(w["name"]), str(w["address"]), remote.WORKER) for w in workers]
    slot_list = ssh_slots.ssh_slots(access, hosts, int(doc.get("runs_per_gpu", 1)))
    if doc.get("parallel"):
        slot_list = slot_list[: int(doc["parallel"])]
    prices = doc.get("prices") or {}
    slots.price_slots(slot_list, lambda host: prices.get(host), lambda slot: slot.host.name)
    bind = known.get("mlflow_bind", "127.0.0.1")
    return SweepPlace(
        slot_list,
        f"http://{bind}:{known.get('mlflow_port', 5000)}",
        Path(doc["root"]) / "sweeps" / "optuna",  # the study locks, beside the sweeps' folders
        int(known.get("optuna_port", 5001)),
        reviver=reviver(doc.get("gcp")),
        data_store=known.get("datasets_store"),  # the bucket's datasets/, else this tracker's dataset server
    )


def reviver(gcp: dict[str, Any] | None) -> Any:
    """On gcp, what starts the workers again that GCP stopped, with the tracker's own service account."""
    if not gcp or not gcp.get("workers"):
        return None
    from toolkit.gcp import revive

    workers = [revive.Worker(str(w["name"]), str(w["instance"]), str(w["zone"])) for w in gcp["workers"]]
    return revive.Reviver(str(gcp["project"]), workers, what=str(gcp.get("what") or "GPU"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit.labs.tracker_sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--data", "--root", dest="root", type=Path, required=True, help="the folder holding sweeps/")
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    try:
        return service.run(args.root, args.name, place)
    except LabError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
