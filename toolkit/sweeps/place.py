"""Where a sweep runs: its slots, the tracker as the dispatcher reaches it, and the Optuna storage."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class SweepPlace:
    slots: list[Any]
    tracking_uri: str
    storage_path: Path  # the study DB (local), or beside which the study's lock lives (remote)
    grpc_port: int | None = None  # the tracker's Optuna storage proxy (through a tunnel, or on the tracker itself)
    reviver: Any = None  # gcp: starts again the workers GCP stopped (toolkit.gcp.revive.Reviver)
    # the dataset store (toolkit.data.fetch's address) as the slots' hosts reach it; None: the lab has none
    data_store: str | None = None
    data_store_here: str | None = None  # the same store as this process reaches it (None: as the hosts do)
    data_token_here: Path | None = None  # the dataset server's token here (None: toolkit.data.fetch's default)
    data_root: Path | None = None  # LAB_DATA of trials run on this machine (the local lab's $LAB_HOME/data)
    requirements: Path | None = None  # the stack's lab:requirements (toolkit.envs): a sweep's default environment
