"""Equivalence within ±margin by TOST (two one-sided tests), and its power.

Why TOST: "a ≈ b" is a claim like any other and needs a test whose error it controls — "the 95 % CI happens
to lie inside ±m" used no adjustment while the opposite verdict used Holm's. TOST tests H0: |Δ| ≥ m against
H1: |Δ| < m with two one-sided paired t-tests, Δ > −m and Δ < +m (``scipy.stats.ttest_1samp`` of the paired
differences against −m with ``alternative="greater"`` and against +m with ``"less"``); its p is the larger of
the two. That p joins Holm's adjustment in the same family as the difference claims.

Power (``tost_power``): exact for normal paired differences, by one numerical integral over the sample SD:
given s, the test rejects when −m + t·s/√n < d̄ < m − t·s/√n (t = the one-sided critical value at α,
df = n − 1), and d̄ ~ N(Δ, σ²/n) independently of s, with (n − 1)s²/σ² ~ χ²(n − 1) (Owen 1965). statsmodels
has no TOST power for paired data; the tests check this one against a seeded simulation.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional, Sequence

from .stats import MAX_SEEDS, POWER

NODES = 256


def tost_p(diffs: Sequence[float], margin: float) -> float:
    """p of TOST on paired differences ``diffs`` for equivalence within ±``margin`` (max of the one-sided p's).
    Zero spread: 0 when the constant difference lies strictly inside the margin, else 1."""
    from scipy import stats

    d = [float(x) for x in diffs]
    if len(set(d)) <= 1:
        return 0.0 if abs(d[0]) < margin else 1.0
    low = stats.ttest_1samp(d, -margin, alternative="greater").pvalue
    high = stats.ttest_1samp(d, margin, alternative="less").pvalue
    return float(max(low, high))


def tost_p_welch(a: Sequence[float], b: Sequence[float], margin: float) -> float:
    """TOST for unpaired groups (Welch): Δ = mean(a) − mean(b) > −m and < +m, by shifting a."""
    from scipy import stats

    a, b = [float(x) for x in a], [float(x) for x in b]
    low = stats.ttest_ind([x + margin for x in a], b, equal_var=False, alternative="greater").pvalue
    high = stats.ttest_ind([x - margin for x in a], b, equal_var=False, alternative="less").pvalue
    p = max(low, high)
    return 1.0 if math.isnan(p) else float(p)


@lru_cache(maxsize=1)
def _nodes():
    """Gauss-Legendre nodes and weights on [-1, 1] (an eigenproblem: computed once)."""
    import numpy as np

    return np.polynomial.legendre.leggauss(NODES)


def tost_power(sd: float, n: int, margin: float, alpha: float, delta: float = 0.0) -> Optional[float]:
    """Probability that TOST at level ``alpha`` declares equivalence within ±``margin`` with ``n`` pairs when the
    true paired difference is ``delta`` and its SD ``sd``; None when ``n`` < 2 or ``sd`` is unknown."""
    if sd is None or n is None or n < 2:
        return None
    from scipy import stats

    if float(sd) == 0.0:
        return 1.0 if abs(delta) < margin else 0.0
    df, se = n - 1, float(sd) / math.sqrt(n)
    crit = float(stats.t.isf(alpha, df))
    x_max = df * (margin / (crit * se)) ** 2  # beyond it the rejection interval for d̄ is empty

    # the integral over the χ² quantile u of s (its whole mass is [0, 1], never missed at large n), by
    # Gauss-Legendre on NODES points: vectorised, and within 1e-6 of scipy.integrate.quad on these integrands
    import numpy as np

    top = float(stats.chi2.cdf(x_max, df))
    x, w = _nodes()
    u = (x + 1.0) * top / 2.0
    half = margin - crit * se * np.sqrt(stats.chi2.ppf(u, df) / df)
    value = float(np.sum(w * (stats.norm.cdf((half - delta) / se) - stats.norm.cdf((-half - delta) / se)))) * top / 2
    return float(min(1.0, max(0.0, value)))


def tost_seeds_needed(sd: float, margin: float, alpha: float, power: float = POWER,
                      delta: float = 0.0) -> Optional[int]:
    """The smallest n ≥ 2 with ``tost_power`` ≥ ``power``; None when ``sd`` is unknown or more than
    ``stats.MAX_SEEDS`` would be needed (e.g. ``delta`` outside the margin)."""
    if sd is None or not margin > 0:
        return None

    def ok(n: int) -> bool:
        return tost_power(sd, n, margin, alpha, delta) >= power

    if ok(2):
        return 2
    if not ok(MAX_SEEDS):
        return None
    low, high = 2, 4
    while not ok(high):
        low, high = high, min(2 * high, MAX_SEEDS)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if ok(mid) else (mid, high)
    return high
