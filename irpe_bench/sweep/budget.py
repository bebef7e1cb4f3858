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

from typing import Dict, List, Tuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from .config import Sweep

DISCARDED = "discarded"


#: Kinds of trial (:func:`_kind`) that count towards the budget.
COUNTED = ("complete", "pruned", "failed", "running", "waiting")


def _kinds(study: optuna.Study) -> List[Tuple[int, str]]:
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
    for _, kind in _kinds(study):
        if kind in count:
            count[kind] += 1
    count["finished"] = count["complete"] + count["pruned"] + count["failed"]
    return count


def over_budget(study: optuna.Study, number: int, target: int) -> bool:
    """Whether trial ``number`` has ``target`` or more counted trials before it (module docstring)."""
    return sum(1 for n, kind in _kinds(study) if n < number and kind in COUNTED) >= target


def target_trials(sweep: Sweep) -> int:
    """``n_trials``, or the grid's number of points."""
    from .space import grid_size

    st = sweep.config.study
    return st.n_trials or grid_size(sweep.config.space, sweep.base_flat)


__all__ = ["budget", "over_budget", "target_trials", "DISCARDED"]
