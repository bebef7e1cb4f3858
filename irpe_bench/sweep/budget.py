"""The sweep's budget, counted in the storage so that every worker on every machine sees the same count.

A trial *counts* unless it failed and was retried (its retry carries its outcome) or was discarded. Workers
start a trial while ``finished + running < target`` (or a queued trial waits), but that check and Optuna's
creation of the trial are two steps: two workers can both pass it for the last slot (seen with two workers on
a four-point grid: five trials, one grid point run twice). So each new trial also checks its own place: trial
numbers are assigned atomically by the storage, and a trial with ``target`` or more counted trials numbered
before it is over the budget and is **discarded** before any work (state FAIL, ``status: discarded``), not
counted, and left out of the leaderboard.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..keys import DISCARDED
from .allotted import grid_params
from .config import Sweep

#: Kinds of trial (:func:`kinds`) that count towards the budget.
COUNTED = ("complete", "pruned", "failed", "running", "waiting")


def kinds(study: optuna.Study) -> List[Tuple[int, str]]:
    """(number, kind) of every trial: its state's name, except that a FAIL is ``retried`` (a retry carries its
    outcome), ``discarded`` (over the budget) or ``failed``."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}

    def kind(t: FrozenTrial) -> str:
        if t.state != TrialState.FAIL:
            return t.state.name.lower()
        if t.user_attrs.get("status") == DISCARDED:
            return DISCARDED
        return "retried" if t.number in retried else "failed"

    return [(t.number, kind(t)) for t in trials]


def budget(study: optuna.Study) -> Dict[str, int]:
    """Trial counts that decide whether to start another: ``finished`` excludes retried and discarded trials."""
    count = {s: 0 for s in (*COUNTED, "retried", DISCARDED)}
    for _, kind in kinds(study):
        if kind in count:
            count[kind] += 1
    count["finished"] = count["complete"] + count["pruned"] + count["failed"]
    return count


def over_budget(study: optuna.Study, number: int, target: int) -> bool:
    """Whether trial ``number`` has ``target`` or more counted trials before it (module docstring)."""
    return sum(1 for n, kind in kinds(study) if n < number and kind in COUNTED) >= target


def point_of(t: FrozenTrial) -> Dict[str, object]:
    """A trial's Optuna parameters: the enqueued ones (a waiting grid point has no ``params`` yet; a retry
    carries its killed trial's), else the sampled ones."""
    return dict(t.system_attrs.get("fixed_params") or t.params)


def counted_points(study: optuna.Study) -> List[Dict[str, object]]:
    """The points of the trials that count (:data:`COUNTED`): a grid point among them needs no new trial —
    finished, running, queued, or failed for good (a failure is not re-run by extending the grid)."""
    kind = dict(kinds(study))
    return [point_of(t) for t in study.get_trials(deepcopy=False) if kind[t.number] in COUNTED]


def target_trials(sweep: Sweep, study: Optional[optuna.Study] = None) -> int:
    """``n_trials``, or the grid's number of points. With the ``study``, a grid also counts its trials at
    points the file no longer has (a removed choice; they are kept, see :mod:`.extend`), so that the budget
    is exactly one trial per point of the old and the new grid together."""
    st = sweep.config.study
    if st.n_trials:
        return st.n_trials
    grid = grid_params(sweep, study)  # seeds until decided: the seeds allotted so far
    if study is None:
        return len(grid)
    return len(grid) + sum(1 for p in counted_points(study) if p not in grid)


__all__ = ["budget", "kinds", "over_budget", "target_trials", "counted_points", "point_of"]
