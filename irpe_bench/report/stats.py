"""Statistics across seeds: pure functions of per-trial metric values (no Optuna, no files but ``recompute``).

What is computed, and why this way:

* **Per group**: ``n``, the mean and its Student-t 95 % CI (``scipy.stats.ttest_1samp(...).confidence_interval``;
  none for n < 2, where a spread cannot be estimated). For a bounded metric (``bounds``: accuracies in [0, 100])
  a t interval that leaves the range is replaced by the BCa bootstrap interval (``intervals.py``), and
  ``ci_method`` says which one a row has. Differences keep the paired t interval.
* **Two groups** (a variant and its baseline, or any two rows for the rank bands): seeds pair runs (same data
  order, same initial weights for the shared parameters), so the comparison is a **paired t-test**
  (``scipy.stats.ttest_rel``) on the seeds both groups completed (``n_pairs`` ≥ 2; a seed that failed in one
  group is dropped from the pairing, not imputed). Where seeds do not pair (fewer than 2 common seeds, or a
  seed repeated inside a group, which makes the pairing ambiguous) it is **Welch's t-test**
  (``ttest_ind(equal_var=False)``), which needs n ≥ 2 in both groups; otherwise no test (``test`` is None).
  NOTE: zero spread (every paired difference identical, or both groups constant) leaves t undefined when the
  difference is 0: that is reported as p = 1 (nothing distinguishes the rows); a constant non-zero difference
  keeps scipy's t = ±inf, p = 0.
* **Holm** (step-down, as ``statsmodels.stats.multitest.multipletests(method="holm")`` computes it: ``holm``)
  adjusts the p-values of the rows of a study against their baselines, and separately the pairwise p-values
  behind the rank bands.
* **Rank bands**: row i's band is ``[1 + #rows significantly better, N - #rows significantly worse]`` with
  "significantly" = Holm-adjusted pairwise p < 0.05. Rows the data cannot separate share a band; ties are
  never broken by anything but the band (the order inside is mean, then config key, for determinism only).
* **Pareto front** (``pareto_front``): the non-dominated points of several objectives (a multi-objective study's
  group means), as Optuna defines dominance.
* **Minimum detectable difference** (MDD): the paired difference that a two-sided paired t-test detects with
  80 % power, at the level its verdict uses: under Holm over a family of m tests that is the worst-case (first)
  step α/m (``holm_worst_alpha``), for the smallest ``n_pairs`` of the study's rows vs baseline and the
  root-mean-square of their paired-difference SDs. Power is the noncentral t (``paired_power``), solved by
  brentq; ``seeds_needed`` inverts it over n.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

ALPHA = 0.05
POWER = 0.8
PAIRED, WELCH = "paired t", "Welch t"

Pairs = Sequence[Tuple[Optional[int], float]]  # (seed, value) per trial of one group


@dataclass(frozen=True)
class Summary:
    """One group's metric over its trials."""

    n: int
    mean: float
    sd: Optional[float]  # sample SD (n - 1); None for n < 2
    ci95: Optional[List[float]]  # [low, high]; None for n < 2
    ci_method: Optional[str] = None  # intervals.T_CI | BCA_CI | PERCENTILE_CI; None for n < 2


@dataclass(frozen=True)
class Comparison:
    """Group a minus group b. ``test`` is None when no test is possible (then every other field but the
    plain difference of means is None)."""

    test: Optional[str]  # PAIRED | WELCH | None
    n_pairs: Optional[int]  # seeds both groups completed (paired test only)
    delta: float  # mean difference a - b (over the pairs for a paired test)
    delta_ci95: Optional[List[float]]
    p_value: Optional[float]
    sd_diff: Optional[float]  # SD of the paired differences (paired test only): the study's noise scale


@dataclass(frozen=True)
class GroupStats:
    """Everything the leaderboard shows about one group's metric."""

    n: int
    mean: float
    sd: Optional[float]
    ci95: Optional[List[float]]
    ci_method: Optional[str]
    baseline_key: Optional[str]
    test: Optional[str]
    n_pairs: Optional[int]
    delta: Optional[float]
    delta_ci95: Optional[List[float]]
    p_value: Optional[float]
    p_holm: Optional[float]
    significant: Optional[bool]
    sd_diff: Optional[float]
    rank: int
    band: List[int]  # [low, high], 1-based
    rank_band: str  # "1–3", or "2" when low == high


@dataclass(frozen=True)
class StudyStats:
    groups: Dict[str, GroupStats]  # in rank order
    mdd: Optional[float]  # minimum detectable paired difference (metric units) at 80 % power, level mdd_alpha
    mdd_sd: Optional[float]  # the pooled (root-mean-square) paired-difference SD behind it
    mdd_n: Optional[int]  # the number of pairs it assumes (the smallest n_pairs of the rows vs baseline)
    mdd_rows: int  # how many rows' SDs were pooled
    has_uncertainty: bool  # False when no group has n ≥ 2 (a one-seed study)
    mdd_alpha: Optional[float] = None  # the level behind mdd: Holm's first step over the rows tested vs baseline
    mdd_family: int = 0  # how many rows Holm adjusts over (the m of mdd_alpha = 0.05 / m)


def _f(x) -> float:
    return float(x)


def summarize(values: Sequence[float], bounds: Optional[Tuple[float, float]] = None) -> Summary:
    """n, mean, sample SD and the 95 % CI of the mean: Student t, or the bootstrap's where ``bounds`` are given
    and the t interval leaves them (``intervals.bounded_ci``)."""
    from scipy import stats

    from .intervals import bounded_ci

    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("summarize: no values")
    mean = statistics.fmean(vals)
    if len(vals) < 2:
        return Summary(len(vals), mean, None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero spread: the CI is [mean, mean], p unused
        ci = stats.ttest_1samp(vals, 0.0).confidence_interval(1 - ALPHA)
    interval, method = bounded_ci([_f(ci.low), _f(ci.high)], vals, bounds)
    return Summary(len(vals), mean, statistics.stdev(vals), interval, method)


def _by_seed(pairs: Pairs) -> Optional[Dict[int, float]]:
    """seed → value, or None when a seed is missing or repeated (then seeds cannot pair the runs)."""
    seeds = [s for s, _ in pairs]
    if any(s is None for s in seeds) or len(set(seeds)) != len(seeds):
        return None
    return {int(s): float(v) for s, v in pairs}


def one_per_seed(pairs: Pairs) -> List[Tuple[Optional[int], float]]:
    """One sample per seed: the runs of a configuration trained again with a seed it already had (a sampler
    proposing the same point twice, each with the same repeated seeds) are one sample, their mean. They are not
    independent draws of the training noise — on a deterministic machine they are identical — so counting
    each would shrink the CI for nothing and stop the seeds from pairing. Unseeded runs stay separate."""
    by: Dict[int, List[float]] = {}
    for seed, v in pairs:
        if seed is not None:
            by.setdefault(int(seed), []).append(float(v))
    if all(len(v) == 1 for v in by.values()):
        return list(pairs)
    out: List[Tuple[Optional[int], float]] = [(s, v) for s, v in pairs if s is None]
    return out + [(s, statistics.fmean(v)) for s, v in sorted(by.items())]


def _p(p: float, delta: float) -> float:
    return 1.0 if math.isnan(p) and delta == 0 else float(p)


def compare(a: Pairs, b: Pairs) -> Comparison:
    """a - b: paired t-test on common seeds (≥ 2), else Welch's t-test (n ≥ 2 each), else no test."""
    from scipy import stats

    va, vb = [float(v) for _, v in a], [float(v) for _, v in b]
    plain = statistics.fmean(va) - statistics.fmean(vb)
    sa, sb = _by_seed(a), _by_seed(b)
    common = sorted(set(sa) & set(sb)) if sa is not None and sb is not None else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero spread is handled below, see module notes
        if len(common) >= 2:
            xa, xb = [sa[s] for s in common], [sb[s] for s in common]
            r = stats.ttest_rel(xa, xb)
            ci = r.confidence_interval(1 - ALPHA)
            diffs = [x - y for x, y in zip(xa, xb)]
            delta = statistics.fmean(diffs)
            return Comparison(PAIRED, len(common), delta, [_f(ci.low), _f(ci.high)], _p(r.pvalue, delta),
                              statistics.stdev(diffs))
        if len(va) >= 2 and len(vb) >= 2:
            r = stats.ttest_ind(va, vb, equal_var=False)
            if math.isnan(r.statistic) and plain == 0:  # both constant and equal
                return Comparison(WELCH, None, plain, [0.0, 0.0], 1.0, None)
            ci = r.confidence_interval(1 - ALPHA)
            return Comparison(WELCH, None, plain, [_f(ci.low), _f(ci.high)], _p(r.pvalue, plain), None)
    return Comparison(None, None, plain, None, None, None)


def holm(p_values: Sequence[float]) -> List[float]:
    """Holm-adjusted p-values (same order); empty in, empty out: the j-th smallest of m p-values times
    m − j + 1, made non-decreasing, capped at 1 — the values of statsmodels' ``multipletests(method="holm")``
    (tests/test_report_stats.py holds them equal). Not that function itself: it ends every Holm call with a full
    garbage collection, which in a process holding torch, Lightning and Optuna visits every object they made,
    once for each family a leaderboard adjusts."""
    import numpy as np

    p = np.asarray(list(p_values), dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(p[order] * np.arange(len(p), 0, -1)), 1.0)
    return [float(a) for a in adjusted]


def min_detectable_difference(sd: float, n_pairs: int, alpha: float = ALPHA, power: float = POWER) -> Optional[float]:
    """The paired difference detected with ``power`` (80 %) by a two-sided paired t-test at level ``alpha``.

    ``alpha`` is the level the verdict will use: under Holm that is the worst-case step of the family
    (:func:`holm_worst_alpha`), not 0.05 — power at 0.05 overstates what a Holm-adjusted verdict can detect."""
    if sd is None or n_pairs is None or n_pairs < 2:
        return None
    return _effect_size(int(n_pairs), float(alpha), float(power)) * float(sd)


def paired_power(d: float, n: int, alpha: float) -> float:
    """Power of the two-sided paired t-test (df = n − 1) at level ``alpha`` for a standardised difference ``d``:
    P(|T| > t_crit) with T noncentral t (nc = d·√n). Both tails are upper tails of ``scipy.stats.nct``
    (P(T < −c; nc) = P(T > c; −nc)): scipy's ``nct.cdf`` returns NaN for some lower tails at Holm-sized α,
    and so does statsmodels' ``TTestPower`` built on it."""
    from scipy import stats

    df, nc = n - 1, float(d) * math.sqrt(n)
    crit = float(stats.t.isf(alpha / 2.0, df))
    return float(stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc))


def _effect_size(n: int, alpha: float, power: float) -> float:
    """Standardised paired difference d with ``paired_power(d) = power``: a bracketed root (brentq). NOTE:
    ``TTestPower().solve_power`` is not used: at Holm-sized α (0.05/30, n = 5) it returns an unconverged 2.91
    without an error where the root is 4.19."""
    from scipy.optimize import brentq

    def gap(d: float) -> float:
        return paired_power(d, n, alpha) - power

    high = 1.0
    while gap(high) < 0:
        high *= 2.0
    return float(brentq(gap, 0.0, high, xtol=1e-10))


def holm_worst_alpha(m: int, alpha: float = ALPHA) -> float:
    """The level of Holm's first (strictest) step over a family of ``m`` tests: ``alpha / m``. A comparison must
    pass it when it has the smallest p of the family, so power planned at it holds for every member."""
    if int(m) < 1:
        raise ValueError(f"holm_worst_alpha: m={m!r}; allowed: an integer ≥ 1 (the family size)")
    return float(alpha) / int(m)


MAX_SEEDS = 100_000  # seeds_needed gives up (None) beyond this: no study of this harness runs that many


def seeds_needed(sd: float, mdd: float, alpha: float, power: float = POWER) -> Optional[int]:
    """The smallest ``n_pairs`` ≥ 2 whose paired-t MDD (:func:`min_detectable_difference` at ``alpha``,
    ``power``) is ≤ ``mdd``; None when ``sd`` is unknown, ``mdd`` ≤ 0 or more than ``MAX_SEEDS`` would be needed.
    Zero spread needs the minimum, 2."""
    if sd is None or mdd is None or not mdd > 0:
        return None
    if float(sd) == 0.0:
        return 2

    def ok(n: int) -> bool:
        return min_detectable_difference(sd, n, alpha, power) <= mdd

    if ok(2):
        return 2
    if not ok(MAX_SEEDS):
        return None
    low, high = 2, 4  # ok(low) is False; find a high that is ok, then bisect to the first ok n
    while not ok(high):
        low, high = high, min(2 * high, MAX_SEEDS)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if ok(mid) else (mid, high)
    return high


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> List[bool]:
    """Non-dominated flags, one per point: point i is dominated when another point is at least as good in every
    objective and strictly better in at least one (``directions``: "maximize" | "minimize" per objective).
    Equal points do not dominate each other, so both stay on the front. O(n² · m): a board has few groups."""
    sign = [1.0 if d == "maximize" else -1.0 if d == "minimize" else float("nan") for d in directions]
    if any(math.isnan(s) for s in sign):
        raise ValueError(f"pareto_front: directions must be 'maximize' or 'minimize', got {list(directions)}")
    pts = [[s * float(v) for s, v in zip(sign, p)] for p in points]
    if any(len(p) != len(sign) for p in pts):
        raise ValueError(f"pareto_front: every point needs {len(sign)} values")

    def dominates(a: List[float], b: List[float]) -> bool:
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return [not any(dominates(q, p) for j, q in enumerate(pts) if j != i) for i, p in enumerate(pts)]


def band_text(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}–{high}"


def study_stats(groups: Mapping[str, Pairs], baseline_of: Mapping[str, Optional[str]],
                bounds: Optional[Tuple[float, float]] = None) -> StudyStats:
    """All statistics of one study.

    ``groups``: config key → [(seed, metric value)] of its COMPLETE trials; ``baseline_of``: config key → the
    config key of its matched baseline (None for none, and for a baseline itself); ``bounds``: the metric's range
    (``intervals.ACCURACY_BOUNDS`` for accuracies), which no per-group interval may leave.
    """
    groups = {k: one_per_seed(g) for k, g in groups.items()}
    summaries = {k: summarize([v for _, v in g], bounds) for k, g in groups.items()}
    order = sorted(groups, key=lambda k: (-summaries[k].mean, k))

    vs_base: Dict[str, Comparison] = {}
    for k in order:
        b = baseline_of.get(k)
        if b is not None and b != k and b in groups:
            vs_base[k] = compare(groups[k], groups[b])
    tested = [k for k in order if k in vs_base and vs_base[k].p_value is not None]
    adjusted = dict(zip(tested, holm([vs_base[k].p_value for k in tested])))

    pairs = [(i, j) for ii, i in enumerate(order) for j in order[ii + 1:]]
    pair_cmp = {(i, j): compare(groups[i], groups[j]) for i, j in pairs}
    testable = [ij for ij in pairs if pair_cmp[ij].p_value is not None]
    better = {k: 0 for k in order}
    worse = {k: 0 for k in order}
    for (i, j), p in zip(testable, holm([pair_cmp[ij].p_value for ij in testable])):
        if p < ALPHA and pair_cmp[(i, j)].delta != 0:
            hi, lo = (i, j) if pair_cmp[(i, j)].delta > 0 else (j, i)
            better[lo] += 1
            worse[hi] += 1

    n_rows = len(order)
    out: Dict[str, GroupStats] = {}
    for rank, k in enumerate(order, 1):
        s, c = summaries[k], vs_base.get(k)
        band = [1 + better[k], n_rows - worse[k]]
        p_holm = adjusted.get(k)
        out[k] = GroupStats(
            n=s.n, mean=s.mean, sd=s.sd, ci95=s.ci95, ci_method=s.ci_method,
            baseline_key=baseline_of.get(k) if c else None,
            test=c.test if c else None, n_pairs=c.n_pairs if c else None, delta=c.delta if c else None,
            delta_ci95=c.delta_ci95 if c else None, p_value=c.p_value if c else None, p_holm=p_holm,
            significant=None if p_holm is None else p_holm < ALPHA, sd_diff=c.sd_diff if c else None,
            rank=rank, band=band, rank_band=band_text(*band))

    paired = [c for c in vs_base.values() if c.test == PAIRED and c.sd_diff is not None]
    mdd = mdd_sd = mdd_n = mdd_alpha = None
    if paired:  # at the level of the verdicts: Holm's worst-case (first) step over the rows it adjusts
        mdd_alpha = holm_worst_alpha(len(tested))
        mdd_sd = math.sqrt(statistics.fmean([c.sd_diff ** 2 for c in paired]))
        mdd_n = min(c.n_pairs for c in paired)
        mdd = min_detectable_difference(mdd_sd, mdd_n, alpha=mdd_alpha)
    return StudyStats(groups=out, mdd=mdd, mdd_sd=mdd_sd, mdd_n=mdd_n, mdd_rows=len(paired),
                      has_uncertainty=any(s.n >= 2 for s in summaries.values()), mdd_alpha=mdd_alpha,
                      mdd_family=len(tested))


def complete_runs(trials_csv: Path, metric: str) -> Iterator[Tuple[str, Dict[str, str], Optional[int], float]]:
    """The COMPLETE rows of a report's ``trials.csv`` that have ``metric``: (config key, the row, seed, value).
    The one reading of that file that the recomputation and the findings share (grouping by config key)."""
    with open(trials_csv, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["state"] == "COMPLETE" and row.get(metric, "") != "":
                key = row.get("config_key") or f"trial-{row['number']}"
                yield key, row, int(row["seed"]) if row["seed"] != "" else None, float(row[metric])


def recompute(trials_csv: Path, leaderboard_json: Path) -> Dict[str, Dict[str, object]]:
    """The per-group statistics again from a report's own files: values from ``trials.csv`` (COMPLETE rows, the
    column named by ``leaderboard.json``'s ``metric``), baselines from its groups' ``baseline_key``.

    Returns config key → ``GroupStats`` as a dict, to compare with ``leaderboard.json``'s groups (a committed
    report whose numbers do not follow from its own trials fails that comparison).
    """
    board = json.loads(Path(leaderboard_json).read_text(encoding="utf-8"))
    metric = board["metric"]
    groups: Dict[str, List[Tuple[Optional[int], float]]] = {}
    for key, _, seed, value in complete_runs(trials_csv, metric):
        groups.setdefault(key, []).append((seed, value))
    baseline_of = {g["config_key"]: g.get("baseline_key") for g in board["groups"]}
    from .intervals import ACCURACY_BOUNDS

    stats = study_stats(groups, baseline_of, ACCURACY_BOUNDS)  # every ranking metric is an accuracy in percent
    return {k: asdict(v) for k, v in stats.groups.items()}
