"""Independent reference computations of power, TOST and the bounded interval, for the tests (other formulas
than the package's: power as an integral over the sample SD with scipy.integrate.quad, TOST by
``ttest_rel`` on shifted rows, the bootstrap by scipy directly)."""
from __future__ import annotations

import math
import statistics
from typing import List, Optional, Sequence

import numpy as np
from scipy import integrate, stats


def paired_power(d: float, n: int, alpha: float) -> float:
    """Two-sided paired t power for standardised difference d: E_s[P(|d̄| > c·s/√n)] with d̄ ~ N(d, 1/n),
    (n − 1)s² ~ χ²(n − 1), integrated over s² with quad (not the noncentral t the package uses)."""
    df, c = n - 1, stats.t.isf(alpha / 2, n - 1)
    se = 1 / math.sqrt(n)

    def given(x: float) -> float:
        cut = c * math.sqrt(x / df) * se
        return (stats.norm.sf((cut - d) / se) + stats.norm.cdf((-cut - d) / se)) * stats.chi2.pdf(x, df)

    lo, hi = stats.chi2.ppf([1e-12, 1 - 1e-12], df)
    return integrate.quad(given, lo, hi, points=[df], limit=400)[0]


def power_at(difference: float, sd: float, n: int, alpha: float) -> float:
    """The power a paired study of n pairs with paired SD ``sd`` has to detect ``difference``: at a minimum
    detectable difference (80 % power) it is 0.8."""
    return paired_power(difference / sd, n, alpha)


def tost_p(a: Sequence[float], b: Sequence[float], margin: float) -> float:
    """TOST by two paired t-tests on shifted rows: a + m > b and a − m < b."""
    up = stats.ttest_rel([x + margin for x in a], b, alternative="greater").pvalue
    down = stats.ttest_rel([x - margin for x in a], b, alternative="less").pvalue
    return max(up, down)


def tost_power_simulated(sd: float, n: int, margin: float, alpha: float, delta: float = 0.0,
                         runs: int = 200_000, seed: int = 1) -> float:
    rng = np.random.default_rng(seed)
    d = rng.normal(delta, sd, size=(runs, n))
    mean, se = d.mean(axis=1), d.std(axis=1, ddof=1) / math.sqrt(n)
    c = stats.t.isf(alpha, n - 1)
    return float(np.mean((mean - c * se > -margin) & (mean + c * se < margin)))


def bounded_ci(values: Sequence[float]) -> List[float]:
    """Student t where inside [0, 100], else scipy's BCa bootstrap (9,999 resamples, seed 0)."""
    ci = stats.t.interval(0.95, len(values) - 1, loc=statistics.fmean(values), scale=stats.sem(values))
    if 0.0 <= ci[0] and ci[1] <= 100.0:
        return [float(ci[0]), float(ci[1])]
    res = stats.bootstrap((np.asarray(values, float),), np.mean, n_resamples=9999, method="BCa",
                          rng=np.random.default_rng(0)).confidence_interval
    return [float(res.low), float(res.high)]


def stalled(values_by_seed: dict, margin: float = 10.0) -> Optional[List[int]]:
    if len(values_by_seed) < 3:
        return None
    med = float(np.median(list(values_by_seed.values())))
    return sorted(s for s, v in values_by_seed.items() if v < med - margin)
