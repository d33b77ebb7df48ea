"""seed_everything: the same seed gives the same random streams."""

from __future__ import annotations

import random

import numpy as np

from toolkit.determinism import seed_everything


def draws() -> tuple[float, list[float]]:
    return random.random(), np.random.rand(3).tolist()  # noqa: S311 -- seeded streams, not secrets


def test_same_seed_same_draws():
    seed_everything(123)
    first = draws()
    seed_everything(123)
    assert draws() == first
    seed_everything(124)
    assert draws() != first


def test_without_torch_there_is_no_generator(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch":
            raise ImportError("no torch here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    seeded = seed_everything(5)
    assert seeded.generator is None and seeded.torch is False
