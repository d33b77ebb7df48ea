"""A sweep's datasets (its space file's `data: [cifar100, stl10@v2]`) on each host before its first trial.

`step(space, folder, place)` is listed in toolkit.sweeps.prepare.STEP_FACTORIES. Its `check()` resolves every
dataset in the store before any trial (the newest version where none is named), so a missing one fails the sweep
naming it, and every host gets the same versions even when one is pushed while the sweep runs. `on_host()` runs
`python -m toolkit.data.fetch` on the host (the lab's Python there) and hands the trials
`LAB_DATA` (the root of the host's copies) and `LAB_DATA_VERSIONS` (`NAME=VERSION,...`), which
`toolkit.data.path(NAME)` reads, and tags each run with `lab.data` (`NAME@VERSION,...`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.data import ROOT_ENV, VERSIONS_ENV, root
from toolkit.errors import LabError
from toolkit.sweeps.prepare import HostCommands, Prepared

WORKER_ROOT = "/var/cache/lab/datasets"  # LAB_DATA on workers: the lab_worker role's lab_worker_dataset_cache
FETCH_TIMEOUT_S = 3600.0
TAG = "lab.data"


@dataclass
class DataStep:
    refs: tuple[str, ...]
    store: str  # the store as the hosts reach it
    store_here: str  # the store as the dispatcher reaches it ("" when it cannot: the hosts check it)
    local_root: Path  # LAB_DATA of the local lab
    name: str = "datasets"
    pinned: tuple[str, ...] = field(default=())  # NAME@VERSION, resolved by check()
    token_here: Path | None = None  # the tracker's dataset server's token as this process reads it (None: the default)

    def check(self) -> None:
        from toolkit.data import fetch

        if self.store_here:
            self.pinned = tuple(fetch.check(self.store_here, self.refs, self.token_here))

    def on_host(self, host: HostCommands) -> Prepared:
        root = str(self.local_root) if host.local else WORKER_ROOT
        argv = [host.python, "-m", "toolkit.data.fetch", "--store", self.store, "--root", root, "--json"]
        result = host.run([*argv, *(self.pinned or self.refs)], timeout=FETCH_TIMEOUT_S)
        if result.returncode != 0:
            lines = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()
            raise LabError(f"datasets on {host.name}: {lines[-1]}")
        try:
            synced: list[dict[str, Any]] = json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise LabError(f"datasets on {host.name}: the fetch answered {result.stdout.strip()[:100]!r}") from None
        pairs = [(str(s["name"]), str(s["version"])) for s in synced]
        return Prepared(
            env={ROOT_ENV: root, VERSIONS_ENV: ",".join(f"{n}={v}" for n, v in pairs)},
            tags={TAG: ",".join(f"{n}@{v}" for n, v in pairs)},
        )


def step(space: Any, folder: Path, place: Any, notebook: Path | None = None) -> DataStep | None:
    """The sweep's dataset step; None when its space file names no data. A sweep that names data where the lab
    has no dataset store is a one-line error."""
    refs = tuple(getattr(space, "data", ()) or ())
    if not refs:
        return None
    store = getattr(place, "data_store", None)
    if not store:
        raise LabError("the space file names datasets (data:) but this lab has no dataset store")
    here = getattr(place, "data_store_here", None)
    local_root = getattr(place, "data_root", None)
    return DataStep(
        refs=refs,
        store=str(store),
        store_here=str(store if here is None else here),
        local_root=Path(local_root) if local_root else root(),
        token_here=getattr(place, "data_token_here", None),
    )
