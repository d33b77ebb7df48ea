"""Tending a sweep's workers while it runs, from one thread of its own: what `lab sweep watch` shows of them (each
GPU's use), the holds that keep their idle power-off away while trials are left for them, and, on gcp, starting
again a worker GCP stopped (`toolkit.gcp.revive.Reviver`, polled here and nowhere else: it is not thread-safe).

Nothing here blocks the sweep: a worker that does not answer costs this thread its SSH timeout, and the slots
read only what it last saw (`view`, `note`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from toolkit.sweeps import workers

TICK_S = 5.0
GPU_EVERY_S = 10.0


class Keeper:
    def __init__(
        self,
        sweep_name: str,
        slot_list: list[Any],
        work_left: Callable[[], bool],
        lost_hosts: Callable[[], set[str]],
        reviver: workers.Revival | None = None,
    ) -> None:
        self.name = sweep_name
        self.hosts = {slot.host.name: (slot.access, slot.host) for slot in slot_list if hasattr(slot, "host")}
        self.work_left = work_left
        self.lost_hosts = lost_hosts
        self.reviver = reviver
        self.view: dict[str, dict[str, Any]] = {name: {} for name in self.hosts}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="keeper", daemon=True)
        self.next_hold = 0.0
        self.next_gpus = 0.0

    def start(self) -> Keeper:
        if self.hosts:
            self.thread.start()
        return self

    def note(self, host: str) -> str:
        return str(self.view.get(host, {}).get("note", ""))

    def stop(self) -> None:
        """Stop tending, and give back the holds: the workers may power themselves off when idle again."""
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(timeout=60)
        lost = self.lost_hosts()
        for name, (access, host) in self.hosts.items():
            if name not in lost:  # a host that does not answer has nothing to release (its hold runs out)
                workers.release(access, host, self.name)

    def _loop(self) -> None:
        while not self.stopped.is_set():
            with contextlib.suppress(Exception):  # tending must never end the sweep
                self.tick(time.monotonic())
            self.stopped.wait(TICK_S)

    def tick(self, now: float) -> None:
        lost = self.lost_hosts()
        hold = now >= self.next_hold and self.work_left()
        gpus = now >= self.next_gpus
        for name, (access, host) in self.hosts.items():
            seen = self.view.setdefault(name, {})
            if self.reviver is not None:
                line = self.reviver.poll(name)
                seen["note"] = line.split(": ", 1)[-1] if line.startswith(f"{name}: ") else line
                if line.endswith(": running"):
                    seen["note"] = ""
            if name in lost:
                seen.pop("gpus", None)
                continue
            if hold:
                workers.hold(access, host, self.name)
            if gpus:
                usage = workers.gpu_usage(access, host)
                if usage is None:
                    seen.pop("gpus", None)
                else:
                    seen["gpus"] = usage
        if hold:
            self.next_hold = now + workers.HOLD_EVERY_S
        if gpus:
            self.next_gpus = now + GPU_EVERY_S
