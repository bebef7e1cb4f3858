"""How many seeds, and how much compute, a study needs (``irpe-bench plan SWEEP.yaml [--mdd 1.0] [--power 0.8]``,
the command in :mod:`.cli`).

Read the sweep's study as a pilot and, for every row compared with its baseline, print: the pairs so far, the SD
of the paired differences (the leaderboard's ranking metric: the noise scale a verdict faces), the seeds needed
to detect a difference of ``--mdd`` points with ``--power``

* **fixed n, Holm**: the paired t-test at Holm's worst (first) step over the study's m comparisons, α / m — the
  level its verdict may have to pass (``report.stats.seeds_needed`` at ``holm_worst_alpha``);
* **until decided**: the maximum seeds of the seeds-until-decided design (``study.seeds``; its looks, or
  min 5, step 5 where the study has none) at α / m per row (Bonferroni, which any-time stopping needs), which
  costs the design's few per cent of inflation over the fixed n but stops most rows earlier
  (``report.sequential.seeds_needed``);

and the compute the missing seeds cost at the row's measured trial time (median ``datetime_complete −
datetime_start`` of its completed trials, on the machines that ran the pilot), divided over the sweep's
``workers``. A baseline needs as many seeds as its hungriest row: its cost is counted once, for that row.
The SDs of a small pilot are themselves uncertain (at n = 5 a 95 % interval spans 0.6–2.9 × SD), so the
numbers are a plan, not a promise.
"""
from __future__ import annotations

import argparse
import statistics
from typing import Any, Dict, List, Optional


def check(args: argparse.Namespace) -> None:
    """Refuse a bad ``--mdd``, ``--power`` or ``--alpha`` before any storage is opened."""
    if not args.mdd > 0:
        raise ValueError(f"--mdd={args.mdd:g}: the difference to detect must be > 0 (metric points)")
    if not 0 < args.power < 1:
        raise ValueError(f"--power={args.power:g}: allowed 0 < power < 1")
    if args.alpha is not None and not 0 < args.alpha < 1:
        raise ValueError(f"--alpha={args.alpha:g}: allowed 0 < alpha < 1")


def _hms(seconds: Optional[float]) -> str:
    if seconds is None:
        return "—"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def plan(sweep, study, mdd: float, target_power: float, alpha: float) -> Dict[str, Any]:
    """The plan as data (one entry per compared row), for :func:`to_text` and tests."""
    from ..report import sequential as Q
    from ..report.leaderboard import collect
    from ..report.stats import holm_worst_alpha, seeds_needed

    board = collect(study)
    if not board.groups:
        raise ValueError(f"study {study.study_name!r} has no completed trial yet: run the pilot first "
                         f"(python run.py sweep {sweep.path})")
    spec = sweep.config.study.seeds
    n_min, step = (spec.min, spec.step) if spec is not None else (5, 5)
    compared = [g for g in board.groups if g.baseline_key is not None and g.sd_diff is not None]
    m = max(1, len(compared))
    a_row = holm_worst_alpha(m, alpha)
    durations: Dict[str, List[float]] = {}
    for r in board.trials:
        if r.state == "COMPLETE" and r.duration_s is not None and r.config_key:
            durations.setdefault(r.config_key, []).append(r.duration_s)
    every = [d for ds in durations.values() for d in ds]
    workers = sweep.config.workers
    rows = []
    for g in compared:
        fixed = seeds_needed(g.sd_diff, mdd, a_row, target_power)
        seq = Q.seeds_needed(g.sd_diff, mdd, a_row, target_power, n_min, step, seeds_needed)
        trial_s = statistics.median(durations.get(g.config_key) or every) if every else None
        base_s = statistics.median(durations.get(g.baseline_key) or every) if every else None
        rows.append({"variant": g.variant, "config_key": g.config_key, "baseline_key": g.baseline_key,
                     "n": g.n_pairs, "sd": g.sd_diff, "fixed": fixed, "sequential": seq, "trial_s": trial_s,
                     "base_trial_s": base_s})
    hungriest: Dict[str, int] = {}  # baseline → the most seeds any of its rows needs (fixed n)
    for r in rows:
        if r["fixed"] is not None:
            hungriest[r["baseline_key"]] = max(hungriest.get(r["baseline_key"], 0), r["fixed"])
    base_n = {g.config_key: g.n for g in board.groups}
    for r in rows:
        extra = None if r["fixed"] is None else max(0, r["fixed"] - r["n"])
        r["extra"] = extra
        r["compute_s"] = None if extra is None or r["trial_s"] is None else extra * r["trial_s"] / workers
    total = sum(r["compute_s"] for r in rows if r["compute_s"] is not None)
    for b, need in hungriest.items():  # each baseline once
        s = statistics.median(durations.get(b) or every) if every else None
        if s is not None:
            total += max(0, need - base_n.get(b, 0)) * s / workers
    return {"study": study.study_name, "metric": board.metric_label, "m": m, "alpha": alpha, "alpha_row": a_row,
            "power": target_power, "mdd": mdd, "workers": workers, "looks": (n_min, step), "rows": rows,
            "total_s": total, "unknown": sum(r["fixed"] is None for r in rows),
            "uncompared": [g.variant for g in board.groups if g.baseline_key is not None and g.sd_diff is None]}


def to_text(p: Dict[str, Any]) -> str:
    lines = [f"plan for study {p['study']}: detect {p['mdd']:g} points of {p['metric']} with power "
             f"{p['power']:.0%}; {p['m']} comparison(s) with a baseline, Holm's worst step α = {p['alpha']:g}/{p['m']}"
             f" = {p['alpha_row']:.4g} (seeds until decided: Bonferroni, the same α per row; looks every "
             f"{p['looks'][1]} from {p['looks'][0]}); compute on {p['workers']} worker(s) at the measured trial time"]
    if not p["rows"]:
        lines.append("  no row has a paired comparison with a baseline yet (needs ≥ 2 common seeds)")
    head = ("row", "n", "paired SD", "seeds fixed n (Holm)", "seeds until decided (max)", "trial", "compute for the "
            "missing seeds")
    table = [head]
    for r in p["rows"]:
        table.append((r["variant"], str(r["n"]), f"{r['sd']:.2f}", "—" if r["fixed"] is None else str(r["fixed"]),
                      "—" if r["sequential"] is None else str(r["sequential"]), _hms(r["trial_s"]),
                      "—" if r["compute_s"] is None else f"{_hms(r['compute_s'])} (+{r['extra']} seeds)"))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.append(f"  total for every row at the fixed n, baselines once: {_hms(p['total_s'])}"
                 + (f" ({p['unknown']} row(s) out of reach: more than 100,000 seeds)" if p["unknown"] else ""))
    if p["uncompared"]:
        lines.append(f"  not planned (no paired SD vs baseline yet): {', '.join(p['uncompared'])}")
    return "\n".join(lines) + "\n"


__all__ = ["check", "plan", "to_text"]
