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

from typing import Dict, Iterable, Set

import optuna
from optuna.trial import FrozenTrial, TrialState

from .config import Sweep

DISCARDED = "discarded"


def _retried(trials: Iterable[FrozenTrial]) -> Set[int]:
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def _counts(t: FrozenTrial, retried: Set[int]) -> bool:
    return not (t.state == TrialState.FAIL and (t.number in retried or t.user_attrs.get("status") == DISCARDED))


def budget(study: optuna.Study) -> Dict[str, int]:
    """Trial counts that decide whether to start another: ``finished`` excludes retried and discarded trials."""
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    count = {s: 0 for s in ("complete", "pruned", "failed", "retried", "discarded", "running", "waiting")}
    for t in trials:
        if t.state == TrialState.FAIL:
            key = "retried" if t.number in retried else "failed"
            count[DISCARDED if t.user_attrs.get("status") == DISCARDED else key] += 1
        elif t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING):
            count[t.state.name.lower()] += 1
    count["finished"] = count["complete"] + count["pruned"] + count["failed"]
    return count


def over_budget(study: optuna.Study, number: int, target: int) -> bool:
    """Whether trial ``number`` has ``target`` or more counted trials before it (module docstring)."""
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    return sum(1 for t in trials if t.number < number and _counts(t, retried)) >= target


def target_trials(sweep: Sweep) -> int:
    """``n_trials``, or the grid's number of points."""
    from .space import grid_size

    st = sweep.config.study
    return st.n_trials or grid_size(sweep.config.space, sweep.base_flat)


__all__ = ["budget", "over_budget", "target_trials", "DISCARDED"]
