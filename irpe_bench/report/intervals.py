"""Confidence intervals of a bounded metric's mean that stay inside its range.

Why: at n = 5 the Student-t interval of skewed accuracies (four seeds near 95 %, one stalled at 60 %) reaches past
100 % — a statement about an accuracy no model can have. Where the t interval lies inside the range it is kept
(it is exact for normal data and what every other row uses); where it does not, the row gets the **BCa
bootstrap** interval of the mean (``scipy.stats.bootstrap``, ``method="BCa"``, ``N_RESAMPLES`` resamples, a fixed
``SEED`` so that the same trials give the same bytes). A bootstrap interval of the mean is made of resampled means,
so it never leaves the range of the data, hence never the metric's range. NOTE: at n = 5 the bootstrap has only
126 distinct resamples and under-covers (it is narrower than a t interval would be); the header names the rows
it was used for, read them as descriptive. A degenerate BCa (NaN: an acceleration that cannot be estimated) falls
back to the percentile bootstrap of the same resamples.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

ACCURACY_BOUNDS = (0.0, 100.0)  # accuracies in percent: the unit of every table
N_RESAMPLES = 9999
SEED = 0
T_CI, BCA_CI, PERCENTILE_CI = "Student t", "BCa bootstrap", "percentile bootstrap"


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95) -> Tuple[List[float], str]:
    """The BCa bootstrap interval of the mean (percentile where BCa is NaN), seeded, and its method."""
    import numpy as np
    from scipy import stats

    data = (np.asarray(values, dtype=float),)
    for method, name in (("BCa", BCA_CI), ("percentile", PERCENTILE_CI)):
        res = stats.bootstrap(data, np.mean, confidence_level=confidence, n_resamples=N_RESAMPLES, method=method,
                              rng=np.random.default_rng(SEED))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (np.isnan(low) or np.isnan(high)):
            return [low, high], name
    raise ValueError(f"bootstrap_ci: no interval for values {list(values)}")  # pragma: no cover - needs NaN data


def bounded_ci(t_ci: Optional[List[float]], values: Sequence[float],
               bounds: Optional[Tuple[float, float]]) -> Tuple[Optional[List[float]], Optional[str]]:
    """``t_ci`` with its method when it lies inside ``bounds`` (or there are none), else the bootstrap's."""
    if t_ci is None:
        return None, None
    if bounds is None or (bounds[0] <= t_ci[0] and t_ci[1] <= bounds[1]):
        return t_ci, T_CI
    return bootstrap_ci(values)
