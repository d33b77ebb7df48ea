"""Search-space files: what a sweep optimises, over which parameters, with which sampler.

```yaml
objective: {metric: val_loss, direction: minimize}   # or maximize
params:
  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
  width: {type: int, low: 16, high: 256, step: 16}
  optimizer: {type: categorical, choices: [sgd, adam]}
fixed: {epochs: 3}                                   # passed to every trial as parameters
sampler: {name: tpe, seed: 42}                       # tpe (default), random, qmc
data: [cifar100, stl10@v2]                           # datasets on each host before its first trial
```

Every problem is reported at once, each naming its field. Optuna is imported only by `distributions`
and `sampler`, when a sweep runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.config.schema import DATASET_REF
from toolkit.errors import LabError

SAMPLERS = ("tpe", "random", "qmc")
DIRECTIONS = ("minimize", "maximize")
PARAM_TYPES = ("float", "int", "categorical")
RESERVED = ("trial_number", "seed")  # the dispatcher injects these


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Space:
    path: Path
    metric: str
    direction: str
    params: tuple[Param, ...]
    fixed: dict[str, Any] = field(default_factory=dict)
    sampler: str = "tpe"
    seed: int | None = None
    data: tuple[str, ...] = ()  # datasets the trials read (NAME or NAME@VERSION), fetched to each host first

    def distributions(self) -> dict[str, Any]:
        """Optuna distributions for `study.ask`."""
        import optuna

        made: dict[str, Any] = {}
        for p in self.params:
            if p.type == "float":
                made[p.name] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
            elif p.type == "int":
                made[p.name] = optuna.distributions.IntDistribution(
                    int(p.low), int(p.high), log=p.log, step=int(p.step or 1)
                )
            else:
                made[p.name] = optuna.distributions.CategoricalDistribution(p.choices)
        return made

    def make_sampler(self) -> Any:
        """The Optuna sampler; a seeded one is seeded per trial, so a resumed study continues (`sampling`)."""
        from toolkit.sweeps import sampling

        return sampling.make(self.sampler, self.seed)

    def trial_seed(self, trial_number: int) -> int:
        """Each trial's seed: fixed by the sampler's seed and the trial number, so a rerun repeats it."""
        return ((self.seed or 0) * 1_000_003 + trial_number) % 2**31


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _infinite_or_nan(value: Any) -> bool:
    """YAML's `.nan`, `.inf` and `-.inf` (a YAML int is always finite)."""
    return isinstance(value, float) and not math.isfinite(value)


def _yaml(value: float) -> str:
    """A non-finite float as the space file spells it."""
    return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")


def _param(name: str, spec: Any, problems: list[str]) -> Param | None:
    where = f"params.{name}"
    if not isinstance(spec, dict):
        problems.append(f"{where}: must be a mapping such as {{type: float, low: 0.0, high: 1.0}}")
        return None
    known = {"type", "low", "high", "log", "step", "choices"}
    for extra in sorted(set(spec) - known):
        problems.append(f"{where}.{extra}: unknown field (known: {', '.join(sorted(known))})")
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        problems.append(f"{where}.type: must be one of {', '.join(PARAM_TYPES)}, got {kind!r}")
        return None
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            problems.append(f"{where}.choices: must be a non-empty list")
            return None
        if len(set(map(repr, choices))) != len(choices):
            problems.append(f"{where}.choices: has duplicates")
        return Param(name, kind, choices=tuple(choices))
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    before = len(problems)
    for label, value in (("low", low), ("high", high)):
        if not _number(value):
            problems.append(f"{where}.{label}: must be a number, got {value!r}")
        elif _infinite_or_nan(value):
            problems.append(f"{where}.{label}: must be a finite number, got {_yaml(value)}")
        elif kind == "int" and not float(value).is_integer():
            problems.append(f"{where}.{label}: must be a whole number for an int parameter, got {value!r}")
    if not isinstance(log, bool):
        problems.append(f"{where}.log: must be true or false, got {log!r}")
    if step is not None and _number(step) and _infinite_or_nan(step):
        problems.append(f"{where}.step: must be a finite positive number, got {_yaml(step)}")
    elif step is not None and (not _number(step) or step <= 0):
        problems.append(f"{where}.step: must be a positive number, got {step!r}")
    if len(problems) > before:
        return None
    if low >= high:
        problems.append(f"{where}: high ({high}) must be greater than low ({low})")
    if log and low <= 0:
        problems.append(f"{where}.low: must be above 0 with log: true, got {low}")
    if log and step is not None:
        problems.append(f"{where}: log and step cannot be used together")
    if len(problems) > before:
        return None
    return Param(name, kind, low=low, high=high, log=log, step=step)


def load(path: Path) -> Space:
    """Read and check a search-space file; every problem at once, as one LabError."""
    import yaml

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabError(f"no search-space file {path}", hint="pass --space with the path of one") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise LabError(f"{path} is not valid YAML{where}") from None
    if not isinstance(document, dict):
        raise LabError(f"{path} must be a mapping with objective: and params:")
    problems: list[str] = []
    for extra in sorted(set(document) - {"objective", "params", "fixed", "sampler", "data"}):
        problems.append(f"{extra}: unknown field (known: objective, params, fixed, sampler, data)")

    objective = document.get("objective")
    metric, direction = None, "minimize"
    if not isinstance(objective, dict):
        problems.append("objective: must be a mapping such as {metric: val_loss, direction: minimize}")
    else:
        metric, direction = objective.get("metric"), objective.get("direction", "minimize")
        if not isinstance(metric, str) or not metric.strip():
            problems.append("objective.metric: must name the metric the notebook logs, e.g. val_loss")
        if direction not in DIRECTIONS:
            problems.append(f"objective.direction: must be minimize or maximize, got {direction!r}")

    params: list[Param] = []
    raw_params = document.get("params")
    if not isinstance(raw_params, dict) or not raw_params:
        problems.append("params: must map each parameter name to its range, e.g. lr: {type: float, ...}")
    else:
        for name, spec in raw_params.items():
            if str(name) in RESERVED:
                problems.append(f"params.{name}: is set by the dispatcher for every trial; rename it")
                continue
            made = _param(str(name), spec, problems)
            if made:
                params.append(made)

    fixed = document.get("fixed") or {}
    if not isinstance(fixed, dict):
        problems.append("fixed: must be a mapping of parameter names to values")
        fixed = {}
    for name in fixed:
        if name in RESERVED:
            problems.append(f"fixed.{name}: is set by the dispatcher for every trial; remove it")
        elif isinstance(raw_params, dict) and name in raw_params:
            problems.append(f"fixed.{name}: is also searched in params; keep it in one place")

    sampler_spec = document.get("sampler") or {}
    sampler, seed = "tpe", None
    if not isinstance(sampler_spec, dict):
        problems.append("sampler: must be a mapping such as {name: tpe, seed: 42}")
    else:
        sampler, seed = sampler_spec.get("name", "tpe"), sampler_spec.get("seed")
        if sampler not in SAMPLERS:
            problems.append(f"sampler.name: must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            problems.append(f"sampler.seed: must be a whole number >= 0, got {seed!r}")

    data = _data(document.get("data"), problems)

    if problems:
        count = len(problems)
        raise LabError(f"{path} has {count} problem{'s' * (count != 1)}: " + "; ".join(problems))
    return Space(
        path=path,
        metric=str(metric),
        direction=str(direction),
        params=tuple(params),
        fixed=dict(fixed),
        sampler=str(sampler),
        seed=seed,
        data=data,
    )


def _data(raw: Any, problems: list[str]) -> tuple[str, ...]:
    """`data: [cifar100, stl10@v2]`: dataset names, each with an optional @version, each once."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        problems.append("data: must be a list of dataset names such as [cifar100, stl10@v2]")
        return ()
    for item in raw:
        if not DATASET_REF.fullmatch(item):
            problems.append(f"data: {item!r} is not NAME or NAME@VERSION (lowercase name; letters, digits, . _ -)")
    names = [item.partition("@")[0] for item in raw]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"data: {name} is listed more than once")
    return tuple(raw)
