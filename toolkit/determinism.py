"""Deterministic runs: `seed_everything(seed)` at the top of a notebook.

It seeds Python's `random`, NumPy and, when installed, PyTorch (CPU and every CUDA device), switches
cuDNN to deterministic kernels (`benchmark=False`, `deterministic=True`), asks PyTorch for deterministic
algorithms (warning, not failing, where an op has none), and returns what a DataLoader needs to be
reproducible too: a seeded generator and a `worker_init_fn` that seeds each worker.

    seeded = seed_everything(seed)
    loader = DataLoader(data, shuffle=True, num_workers=4,
                        generator=seeded.generator, worker_init_fn=seeded.worker_init_fn)
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Seeded:
    seed: int
    generator: Any  # a torch.Generator for DataLoader(generator=...), or None without PyTorch
    torch: bool

    @staticmethod
    def worker_init_fn(worker_id: int) -> None:
        """Seed `random` and NumPy in a DataLoader worker from the seed PyTorch gave that worker."""
        import numpy as np
        import torch

        worker_seed = torch.initial_seed() % 2**32
        random.seed(worker_seed)
        np.random.seed(worker_seed)


def seed_everything(seed: int, *, deterministic_torch: bool = True) -> Seeded:
    seed = int(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)  # for processes started from here (DataLoader workers)
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    try:
        import torch
    except ImportError:
        return Seeded(seed=seed, generator=None, torch=False)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic_torch:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return Seeded(seed=seed, generator=generator, torch=True)
