"""Seeds until decided: a group-sequential paired comparison that stays valid when a study stops adding seeds
to a row as soon as its comparison is decided. Pure functions (numpy, scipy); no Optuna, no files.

**Method: a two-sided group-sequential design with the Lan–DeMets O'Brien–Fleming-type α-spending function**
(Lan & DeMets 1983; Jennison & Turnbull, *Group Sequential Methods*, 2000, ch. 7, 9 and 19), at the looks the
study declares before it starts: ``n = min, min + step, …, max`` paired seeds. At look k with information
fraction ``t_k = n_k / max`` it spends ``α(t) = 2 − 2 Φ(z_{1−α/2} / √t)`` in total, so the boundaries ``c_k``
satisfy ``P(|Z_j| < c_j for j < k, |Z_k| ≥ c_k) = α(t_k) − α(t_{k−1})`` under the null; they are found by the
recursive numerical integration of Armitage, McPherson & Rowe (J&T ch. 19), deterministic and exact to the
grid (checked against the published K = 5 table in the tests).

* **Unknown variance.** Each look uses the paired t statistic: its nominal level ``p_k = 2 (1 − Φ(c_k))`` is
  kept and the boundary is the t quantile at that level with ``n_k − 1`` degrees of freedom (the
  "significance-level approach", J&T §11.4). The simulation in ``tests/test_sequential.py`` measures the
  type-I error it gives under peeking at every look.
* **The anytime CI: repeated confidence intervals** (Jennison & Turnbull 1989): ``mean ± t_k · sd / √n_k``.
  They cover the true difference at *all* looks at once with probability 1 − α, so a decision taken at any
  look — including one chosen by looking at the data, or by another metric — keeps its guarantee. That is what
  makes "stop on validation, report the test metric's interval at the look where it stopped" valid.
* **Decisions per look**: the interval excludes 0 → ``higher`` / ``lower``; with an equivalence margin m the
  interval inside (−m, m) → ``equivalent`` (the repeated CI has simultaneous coverage, so this is a valid
  equivalence test at every look; it is stricter than a fixed-n TOST, which uses a 90 % interval); else
  ``continue``, and at the last declared look ``not resolved``.
* **Multiplicity**: each of a family's m comparisons runs its own design at α/m (Bonferroni). The union bound
  needs no independence and no fixed sample size, so the family-wise error stays ≤ α under any stopping of any
  row — unlike Holm, whose step-down needs all p-values at one time.
* **Flexible looks.** A failed seed leaves fewer pairs at a look: the spending is evaluated at the actual
  fraction ``n_k / max`` (Lan–DeMets' point: the looks need not be equally spaced, only not chosen from the
  data), and the last declared look spends what is left (``t = 1``).

Why not a confidence sequence for bounded data (betting / empirical Bernstein, Howard et al. 2021,
Waudby-Smith & Ramdas 2023)? It is valid after every single seed without a normal approximation, but its
width carries a term proportional to the *range* of the data: paired accuracy differences live in
[−100, 100] while their SD is 1–5 points, and at n = 60 that range term alone is ≈ 10–20 points — it could not
resolve the 1-point effects this step exists for. A sub-Gaussian normal mixture needs a known σ (the range
again). The group-sequential design costs ≈ 2–5 % more seeds than a fixed-n test (:func:`inflation`), at the
price of the t approximation (measured, not assumed) and of looks declared in advance.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

CONTINUE, HIGHER, LOWER, EQUIVALENT, NOT_RESOLVED = "continue", "higher", "lower", "equivalent", "not resolved"
DECIDED = (HIGHER, LOWER, EQUIVALENT)
METHOD = ("group-sequential paired t, Lan–DeMets O'Brien–Fleming α-spending, repeated 95 % CIs "
          "(Jennison & Turnbull), Bonferroni over the family")
_GRID = 1201  # points of the numerical integration per look


def _obf(t: np.ndarray, alpha: float) -> np.ndarray:
    from scipy.stats import norm

    t = np.asarray(t, dtype=float)
    return 2.0 * norm.sf(norm.isf(alpha / 2.0) / np.sqrt(t))  # NOTE: sf, not 1 − cdf: exact at 1e−27


def _pocock(t: np.ndarray, alpha: float) -> np.ndarray:
    return alpha * np.log1p((math.e - 1.0) * np.asarray(t, dtype=float))


#: spending functions α(t, α) → cumulative two-sided α spent by information fraction t ∈ (0, 1]
SPENDING: Dict[str, Callable[[np.ndarray, float], np.ndarray]] = {"obrien_fleming": _obf, "pocock": _pocock}


Spending = "str | Callable[[np.ndarray, float], np.ndarray]"


def _spend(spending) -> Callable[[np.ndarray, float], np.ndarray]:
    """A registry key, or a spending function itself (α(t, α) → cumulative two-sided α)."""
    return spending if callable(spending) else SPENDING[spending]


def _check(fractions: Sequence[float], alpha: float, spending) -> np.ndarray:
    if not callable(spending) and spending not in SPENDING:
        raise ValueError(f"spending={spending!r}: unknown; choices: {sorted(SPENDING)}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha!r}: allowed 0 < alpha < 1")
    t = np.asarray(fractions, dtype=float)
    if t.ndim != 1 or not len(t) or np.any(t <= 0) or np.any(t > 1 + 1e-12) or np.any(np.diff(t) <= 0):
        raise ValueError(f"fractions={list(fractions)}: need increasing information fractions in (0, 1]")
    return t


def _kernel(u: np.ndarray, s: np.ndarray, var: float, drift: float) -> np.ndarray:
    """Density of the score S_k = s given S_{k−1} = u: increments N(drift·var, var)."""
    z = (s[:, None] - u[None, :] - drift * var) / math.sqrt(var)
    return np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi * var)


def _weights(n: int, half: float) -> Tuple[np.ndarray, np.ndarray]:
    """Grid on (−half, half) and its Simpson weights (n odd)."""
    s = np.linspace(-half, half, n)
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return s, w * (s[1] - s[0]) / 3.0


def z_boundaries(fractions: Sequence[float], alpha: float = 0.05, spending: Spending = "obrien_fleming",
                 grid: int = _GRID) -> List[float]:
    """Two-sided standard-normal boundaries c_k at the information fractions (module docstring). The last
    fraction is taken as it is given (pass 1.0 to spend all of ``alpha``)."""
    t = _check(fractions, alpha, spending)
    if callable(spending):
        return _boundaries(tuple(t), float(alpha), spending, grid)
    return list(_cached(tuple(round(float(x), 12) for x in t), float(alpha), spending, grid))


@lru_cache(maxsize=256)
def _cached(t: Tuple[float, ...], alpha: float, spending: str, grid: int) -> Tuple[float, ...]:
    """Every worker of a study asks for the same few designs at every look."""
    return tuple(_boundaries(t, alpha, spending, grid))


def _boundaries(fractions: Tuple[float, ...], alpha: float, spending, grid: int) -> List[float]:
    from scipy.optimize import brentq
    from scipy.stats import norm

    t = np.asarray(fractions, dtype=float)
    spent = _spend(spending)(t, alpha)
    bounds: List[float] = []
    s = w = f = None  # grid, weights and sub-density of S on the continuation region of the last look
    for k, tk in enumerate(t):
        target = spent[k] - (spent[k - 1] if k else 0.0)
        if k == 0:
            c = float(norm.isf(target / 2.0))
        else:
            var = tk - t[k - 1]
            mass = f * w

            def exit_prob(c: float) -> float:
                b = c * math.sqrt(tk)
                sd = math.sqrt(var)
                return float(np.sum(mass * (norm.cdf((-b - s) / sd) + norm.sf((b - s) / sd))))

            hi = 1.0
            while exit_prob(hi) > target:
                hi *= 2.0
            c = float(brentq(lambda x: exit_prob(x) - target, 1e-6, hi, xtol=1e-10)) if target > 0 else math.inf
        bounds.append(c)
        half = c * math.sqrt(tk) if math.isfinite(c) else 10.0 * math.sqrt(tk)
        s_new, w_new = _weights(grid, half)
        if k == 0:
            f = np.exp(-0.5 * s_new ** 2 / tk) / math.sqrt(2.0 * math.pi * tk)
        else:
            f = _kernel(s, s_new, tk - t[k - 1], 0.0) @ (f * w)
        s, w = s_new, w_new
    return bounds


def power(fractions: Sequence[float], bounds: Sequence[float], drift: float, grid: int = _GRID) -> float:
    """P(some |Z_k| ≥ c_k) when the score has drift ``drift`` (= δ/σ · √n_max in z units): the design's power."""
    from scipy.stats import norm

    t = np.asarray(fractions, dtype=float)
    total, s, w, f = 0.0, None, None, None
    for k, (tk, c) in enumerate(zip(t, bounds)):
        b = c * math.sqrt(tk) if math.isfinite(c) else 12.0 * math.sqrt(tk)
        if k == 0:
            total += float(norm.sf((b - drift * tk) / math.sqrt(tk)) + norm.cdf((-b - drift * tk) / math.sqrt(tk)))
            s, w = _weights(grid, b)
            f = np.exp(-0.5 * (s - drift * tk) ** 2 / tk) / math.sqrt(2.0 * math.pi * tk)
            continue
        var = tk - t[k - 1]
        sd, mass = math.sqrt(var), f * w
        total += float(np.sum(mass * (norm.sf((b - s - drift * var) / sd) + norm.cdf((-b - s - drift * var) / sd))))
        s_new, w_new = _weights(grid, b)
        f = _kernel(s, s_new, var, drift) @ mass
        s, w = s_new, w_new
    return total


def inflation(fractions: Sequence[float], alpha: float, target_power: float,
              spending: str = "obrien_fleming") -> float:
    """Maximum sample size of the design ÷ that of a fixed-n z-test with the same α and power (J&T's R):
    the price of the looks, ≈ 1.02–1.06 for O'Brien–Fleming."""
    return _inflation(tuple(round(float(x), 12) for x in fractions), float(alpha), float(target_power), spending)


@lru_cache(maxsize=256)
def _inflation(t: Tuple[float, ...], alpha: float, target_power: float, spending: str) -> float:
    from scipy.optimize import brentq
    from scipy.stats import norm

    bounds = z_boundaries(t, alpha, spending, grid=401)
    fixed = norm.isf(alpha / 2.0) + norm.isf(1.0 - target_power)
    drift = brentq(lambda d: power(t, bounds, d, grid=201) - target_power, 0.5 * fixed, 2.0 * fixed, xtol=1e-5)
    return float((drift / fixed) ** 2)


def t_boundaries(ns: Sequence[int], bounds: Sequence[float]) -> List[float]:
    """The t boundaries of the looks: the quantile at each z boundary's nominal level, ``n_k − 1`` df."""
    from scipy.stats import norm, t

    return [math.inf if not math.isfinite(c) or n < 2 else float(t.isf(norm.sf(c), n - 1))
            for n, c in zip(ns, bounds)]


def looks(n_min: int, n_max: int, step: int) -> List[int]:
    """The declared looks: min, min + step, …, and max (max is always the last)."""
    if not 2 <= n_min <= n_max or step < 1:
        raise ValueError(f"seeds min={n_min}, max={n_max}, step={step}: need 2 <= min <= max and step >= 1")
    out = list(range(n_min, n_max + 1, step))
    return out if out[-1] == n_max else [*out, n_max]


def fractions_of(ns: Sequence[int], n_max: int, final: bool) -> List[float]:
    """Information fractions of the looks so far (``final``: the last one spends what is left, t = 1)."""
    fr = [min(1.0, n / n_max) for n in ns]
    if final:
        fr[-1] = 1.0
    return fr


@dataclass(frozen=True)
class Look:
    """One look at one comparison (a row minus its baseline, metric units)."""

    n: int  # pairs
    delta: Optional[float]  # mean paired difference
    sd: Optional[float]
    fraction: float
    z_bound: float
    t_bound: float
    ci: Optional[List[float]]  # repeated CI (simultaneous over the looks)
    decision: str


def decide(ci: Optional[List[float]], margin: Optional[float], final: bool) -> str:
    if ci is not None:
        if ci[0] > 0:
            return HIGHER
        if ci[1] < 0:
            return LOWER
        if margin is not None and -margin < ci[0] and ci[1] < margin:
            return EQUIVALENT
    return NOT_RESOLVED if final else CONTINUE


def analyse(diffs: Sequence[Sequence[float]], n_max: int, alpha: float, margin: Optional[float] = None,
            final: bool = False, spending: str = "obrien_fleming") -> List[Look]:
    """Every look of one comparison: ``diffs[k]`` are the paired differences available at look k (growing),
    ``alpha`` the comparison's own level (α/m of its family), ``final``: the last entry is the last declared
    look. Looks that added no pair are merged into the previous one (they cannot change anything). Looks after a
    decision are still computed (the caller stops at the first decision)."""
    merged: List[Sequence[float]] = []
    for d in diffs:
        if merged and len(d) == len(merged[-1]):
            merged[-1] = d
        else:
            merged.append(d)
    usable = [d for d in merged if len(d) >= 1]
    if not usable:
        return []
    ns = [len(d) for d in usable]
    fr = fractions_of(ns, n_max, final)
    keep = [i for i in range(len(fr)) if i == 0 or fr[i] > fr[i - 1]]
    usable, ns, fr = [usable[i] for i in keep], [ns[i] for i in keep], [fr[i] for i in keep]
    zb = z_boundaries(fr, alpha, spending)
    tb = t_boundaries(ns, zb)
    out: List[Look] = []
    for k, (d, n, f, z, tk) in enumerate(zip(usable, ns, fr, zb, tb)):
        x = np.asarray(d, dtype=float)
        mean = float(x.mean())
        sd = float(x.std(ddof=1)) if n >= 2 else None
        ci = None
        if sd is not None and math.isfinite(tk):
            half = tk * sd / math.sqrt(n)
            ci = [mean - half, mean + half]
        last = final and k == len(usable) - 1
        out.append(Look(n, mean, sd, f, z, tk, ci, decide(ci, margin, last)))
    return out


def paired_at_looks(row: Mapping[Any, Optional[float]], base: Mapping[Any, Optional[float]],
                    ns: Sequence[int]) -> List[List[float]]:
    """The paired differences row − base, seed by seed, over the seeds ``0 … n − 1`` both have, for each look n
    (what :func:`analyse` takes; a seed with a missing value on either side is a missing pair)."""
    common = sorted(s for s in row if s is not None and s in base and row[s] is not None and base[s] is not None)
    return [[row[s] - base[s] for s in common if s < n] for n in ns]


def family_alpha(alpha: float, m: int) -> float:
    """Each comparison's level in a family of m (Bonferroni; valid under any stopping rule)."""
    if m < 1:
        raise ValueError(f"family size m={m!r}: need m >= 1")
    return alpha / m


#: the planner evaluates the inflation at most at this many equally spaced looks (a study with more: ≈ the same R)
MAX_PLANNED_LOOKS = 20


def seeds_needed(sd: float, mdd: float, alpha: float, target_power: float, n_min: int, step: int,
                 fixed_n: Callable[[float, float, float, float], Optional[int]]) -> Optional[int]:
    """Maximum seeds of a seeds-until-decided design that detects ``mdd`` with ``target_power`` at level
    ``alpha`` (the row's α/m): the fixed-n paired-t seeds (``fixed_n``: ``stats.seeds_needed``) times the
    design's inflation at looks min, min + step, …, rounded up to a look. Approximate: the inflation is the z
    design's (J&T ch. 2), the t correction the fixed-n test's."""
    n_fixed = fixed_n(sd, mdd, alpha, target_power)
    if n_fixed is None:
        return None
    n = max(n_min, n_fixed)
    for _ in range(50):  # the looks depend on max; iterate to a fixed point
        ns = looks(n_min, n, step)
        if len(ns) > MAX_PLANNED_LOOKS:  # NOTE: R grows by < 1 % beyond 20 looks; keep the plan fast
            ns = [round(n * (k + 1) / MAX_PLANNED_LOOKS) for k in range(MAX_PLANNED_LOOKS)]
        r = inflation(fractions_of(ns, n, True), alpha, target_power) if len(ns) > 1 else 1.0
        need = max(n_min, math.ceil(r * n_fixed - 1e-9))
        need = n_min + step * math.ceil((need - n_min) / step)
        if need <= n:
            return n
        n = need
    return n


__all__ = ["METHOD", "SPENDING", "Look", "analyse", "decide", "family_alpha", "fractions_of", "inflation", "looks",
           "power", "seeds_needed", "t_boundaries", "z_boundaries", "CONTINUE", "HIGHER", "LOWER", "EQUIVALENT",
           "NOT_RESOLVED", "DECIDED"]
