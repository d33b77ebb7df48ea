"""How a study's next parameters are chosen so that a sweep continues its study rather than starting it over.

A seeded sampler is seeded again before each trial from (the space's seed, the trial's number): trial N's parameters
depend on the seed, the trial number and the study's history, never on how many dispatches it took to reach N (a
fresh sampler seeded 42 on each dispatch would start its random start-up sequence again, repeating trials 0, 1, ...).
Optuna calls `before_trial` with the trial's number once the trial exists, before anything is sampled
(optuna/trial/_trial.py, `Trial.__init__`); TPE's start-up trials come from its `_random_sampler`, QMC's first trial
from its `_independent_sampler`, each a `LazyRandomState` (optuna/samplers/_lazy_random_state.py, optuna 5.1).

`ask` never hands out the parameters of a trial the study completed, runs or has queued: a repeat is recorded as a
failed trial tagged `lab_repeat_of` (not counted as one of the sweep's trials) and asked again, a bounded number of
times; a finite space (categorical, int, stepped float) that has nothing left to offer ends the sweep (`Exhausted`).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import optuna

from toolkit.sweeps.dispatch import REPEAT_ATTR
from toolkit.sweeps.space import Param, Space

MAX_REASKS = 8  # asks for parameters not tried yet, before a finite space's untried set is picked from directly
ENUMERATE_LIMIT = 100_000  # a finite space up to this size has its untried parameter sets listed when needed
DIGITS = 12  # parameters compare at this many significant digits (a float read back from storage may differ below)


def trial_rng_seed(seed: int, number: int) -> int:
    """The sampler's RNG seed for trial `number` of a study swept with `seed`."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def _reseed(sampler: Any, seed: int) -> None:
    for owner in (sampler, getattr(sampler, "_random_sampler", None), getattr(sampler, "_independent_sampler", None)):
        state = getattr(owner, "_rng", None)
        if state is not None:
            state.rng.seed(seed)


class _PerTrialSeed:
    """Seeds the sampler's RNGs from (seed, trial number) before each trial samples (see the module's notes)."""

    lab_seed: int

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        _reseed(self, trial_rng_seed(self.lab_seed, trial.number))
        super().before_trial(study, trial)  # type: ignore[misc]


class TPESampler(_PerTrialSeed, optuna.samplers.TPESampler):
    pass


class RandomSampler(_PerTrialSeed, optuna.samplers.RandomSampler):
    pass


class QMCSampler(_PerTrialSeed, optuna.samplers.QMCSampler):
    pass


SEEDED = {"tpe": TPESampler, "random": RandomSampler, "qmc": QMCSampler}
PLAIN = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler, "qmc": optuna.samplers.QMCSampler}


def make(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    """The space's sampler; seeded per trial when the space names a seed."""
    if seed is None:
        return PLAIN[name]()
    sampler = SEEDED[name](seed=seed)
    sampler.lab_seed = seed
    return sampler


# -- parameter sets ------------------------------------------------------------------------------------------------
def key(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A parameter set, comparable with another read back from storage."""
    return tuple(sorted((name, _rounded(value)) for name, value in params.items()))


def _rounded(value: Any) -> Any:
    return float(f"{value:.{DIGITS}g}") if isinstance(value, float) else value


def _values(param: Param) -> list[Any] | None:
    """Every value a parameter can take, None when they cannot be counted (a float without a step)."""
    if param.type == "categorical":
        return list(param.choices)
    if param.type == "int":
        step = int(param.step or 1)
        return list(range(int(param.low), int(param.high) + 1, step))  # type: ignore[arg-type]
    if param.step is None:
        return None
    count = math.floor((param.high - param.low) / param.step + 1e-9) + 1  # type: ignore[operator]
    return [param.low + k * param.step for k in range(count)]  # type: ignore[operator]


def size(space: Space) -> int | None:
    """How many parameter sets the space holds; None when it is not finite."""
    total = 1
    for param in space.params:
        if param.type == "int":
            total *= (int(param.high) - int(param.low)) // int(param.step or 1) + 1  # type: ignore[arg-type]
            continue
        values = _values(param)
        if values is None:
            return None
        total *= len(values)
    return total


def untried(space: Space, taken: set[tuple[tuple[str, Any], ...]], seed: int) -> dict[str, Any] | None:
    """A parameter set of a finite space not in `taken`, picked with `seed`; None when none is left."""
    columns = [_values(param) or [] for param in space.params]
    names = [param.name for param in space.params]
    left = [combo for combo in itertools.product(*columns) if key(dict(zip(names, combo, strict=True))) not in taken]
    if not left:
        return None
    return dict(zip(names, left[int(np.random.default_rng(seed).integers(len(left)))], strict=True))


class Exhausted(Exception):
    """The finite space has no parameter set the study has not tried."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.count = count


def ask(study: optuna.Study, space: Space) -> optuna.trial.Trial:
    """The study's next trial, with parameters no completed, running or queued trial of the study has; raises
    `Exhausted` when a finite space has none left."""
    states = optuna.trial.TrialState
    distributions = space.distributions()
    total = size(space)
    for attempt in range(MAX_REASKS + 1):
        others = study.get_trials(deepcopy=False, states=(states.COMPLETE, states.RUNNING, states.WAITING))
        waiting = any(t.state == states.WAITING for t in others)  # queued: the ask takes one of those first
        taken = {key(t.params): t.number for t in others if t.state != states.WAITING}
        if total is not None and len(taken) >= total and not waiting:
            raise Exhausted(total)
        if attempt == MAX_REASKS:
            if total is None or total > ENUMERATE_LIMIT:
                return study.ask(distributions)  # an uncountable space that keeps repeating: let it
            pick = untried(space, set(taken), trial_rng_seed(space.seed or 0, len(study.get_trials(deepcopy=False))))
            if pick is None:
                raise Exhausted(total)
            study.enqueue_trial(pick, skip_if_exists=False)
        trial = study.ask(distributions)
        earlier = taken.get(key(trial.params))
        if earlier is None:
            return trial
        study._storage.set_trial_user_attr(trial._trial_id, REPEAT_ATTR, earlier)
        study.tell(trial, state=states.FAIL)
    raise AssertionError("unreachable")  # the last attempt returns or raises
