"""Stalled runs: counted and shown beside a row's CI, never dropped.

A run **stalls** when its best validation top-1 (``acc1_best`` in ``trials.csv``: the best over epochs, judged on
validation, never on test) ends more than ``STALL_MARGIN`` points below the median of its row's runs. The rule
needs ``STALL_MIN_RUNS`` runs in the row (a median of two is their mean: one bad seed would "stall" the other
too). Why count them: on the small recipes a few seeds sit near chance for half the schedule and end 20-40
points low; they dominate the spread, and a reader must see that a wide CI comes from 2 of 40 stalled seeds,
not from 40 noisy ones. Dropping them would be choosing data after seeing it.
"""
from __future__ import annotations

import statistics
from typing import List, Optional, Sequence, Tuple

STALL_MARGIN = 10.0  # points of best validation top-1 below the row's median
STALL_MIN_RUNS = 3


def stalled(runs: Sequence[Tuple[Optional[int], float]]) -> Optional[List[Optional[int]]]:
    """The seeds (None for an unseeded run) of the stalled runs among ``runs`` = [(seed, best val top-1 %)], in
    seed order; None when the row has fewer than ``STALL_MIN_RUNS`` runs (the rule does not apply)."""
    if len(runs) < STALL_MIN_RUNS:
        return None
    median = statistics.median(float(v) for _, v in runs)
    out = [s for s, v in runs if float(v) < median - STALL_MARGIN]
    return sorted(out, key=lambda s: (s is None, s if s is not None else 0))


def stall_text(n_stalled: Optional[int], n_runs: int, seeds: Sequence[Optional[int]]) -> Optional[str]:
    """"2 of 40 stalled (seeds 3, 17)"; None when the rule does not apply."""
    if n_stalled is None:
        return None
    if not n_stalled:
        return f"0 of {n_runs} stalled"
    named = [str(s) for s in seeds if s is not None]
    which = f" (seed{'s' * (len(named) > 1)} {', '.join(named)})" if named else ""
    return f"{n_stalled} of {n_runs} stalled{which}"
