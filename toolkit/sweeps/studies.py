"""The sweeps kept in a tracker's optuna.db: listing them, their best trials, their plots."""

from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.errors import LabError


@dataclass(frozen=True)
class StudySummary:
    name: str
    direction: str
    trials: int
    complete: int
    failed: int  # trials that failed (not those interrupted: they are queued to run again)
    best: float | None
    last_activity: dt.datetime | None
    cost_usd: float | None = None  # the trials' cost (dispatch's `cost_usd`), None when none was priced
    trial_hours: float = 0.0  # time the trials ran, in all
    interrupted: int = 0  # trials stopped by Ctrl-C, `lab sweep stop` or the budget guard (their parameters queued)


def local_storage(path: Path) -> str:
    if not path.exists():
        raise LabError(f"there are no sweeps yet ({path} does not exist)", hint="run `lab dispatch` first")
    return f"sqlite:///{path}"


def load(storage: Any, name: str) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        known = ", ".join(optuna.get_all_study_names(storage)) or "none"
        raise LabError(f"no sweep named {name!r}", hint=f"known sweeps: {known}") from None


def summaries(storage: Any) -> list[StudySummary]:
    import optuna

    from toolkit.sweeps.dispatch import INTERRUPTED

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    found = []
    for name in optuna.get_all_study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        stamps = [t.datetime_complete or t.datetime_start for t in trials if t.datetime_complete or t.datetime_start]
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
        costs = [t.user_attrs["cost_usd"] for t in trials if isinstance(t.user_attrs.get("cost_usd"), int | float)]
        hours = sum(
            (t.datetime_complete - t.datetime_start).total_seconds() / 3600
            for t in trials
            if t.datetime_complete and t.datetime_start
        )
        best = None
        if complete:
            best = (min if study.direction == optuna.study.StudyDirection.MINIMIZE else max)(t.value for t in complete)
        found.append(
            StudySummary(
                name=name,
                direction=study.direction.name.lower(),
                trials=len(trials),
                complete=len(complete),
                failed=sum(1 for t in failed if not t.user_attrs.get(INTERRUPTED)),
                interrupted=sum(1 for t in failed if t.user_attrs.get(INTERRUPTED)),
                best=best,
                last_activity=max(stamps) if stamps else None,
                cost_usd=sum(costs) if costs else None,
                trial_hours=hours,
            )
        )
    return sorted(found, key=lambda s: s.last_activity or dt.datetime.min, reverse=True)


def best_trials(study: Any, count: int) -> list[Any]:
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(complete, key=lambda t: t.value, reverse=reverse)[:count]


def plot_parallel_coordinates(study: Any, folder: Path) -> list[Path]:
    """The parameters against the objective: HTML (plotly) and PNG (matplotlib), whichever are installed."""
    import optuna

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if not best_trials(study, 1):
        raise LabError(f"sweep {study.study_name!r} has no completed trial to plot")
    try:
        figure = optuna.visualization.plot_parallel_coordinate(study)
        html = folder / "parallel-coordinates.html"
        figure.write_html(str(html), include_plotlyjs=True)
        written.append(html)
    except ImportError:
        pass
    try:
        import matplotlib

        matplotlib.use("Agg")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
            axes = optuna.visualization.matplotlib.plot_parallel_coordinate(study)
        png = folder / "parallel-coordinates.png"
        axes.figure.savefig(png, dpi=120, bbox_inches="tight")
        written.append(png)
    except ImportError:
        pass
    if not written:
        raise LabError(
            "cannot draw the plot: neither plotly nor matplotlib is installed", hint="pip install -e '.[local]'"
        )
    return written
