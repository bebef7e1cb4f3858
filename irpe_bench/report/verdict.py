"""The end of a sweep in plain words: what was compared, Δ with its 95 % CI, resolved or not, n, the machine.

The full report (Markdown, CSV, HTML, JSON, LaTeX, plots) is written beside the study; the terminal gets this
short verdict and the report's path, the whole Markdown only on request (``--markdown``). For a seeds-until-
decided study the decisions are the sequential ones (the ranking's fixed-n tests are descriptive there).
"""
from __future__ import annotations

from typing import Dict, List, Optional

from .leaderboard import GroupRow, Leaderboard


def _pts(x: float) -> str:
    return f"{x:+.2f}"


def _machines(board: Leaderboard) -> str:
    devices = sorted({g.device.split(" / ")[0] for g in board.groups if g.device})
    return "; ".join(devices) if devices else "machine not recorded"


def _fixed(g: GroupRow, ref: str, board: Leaderboard) -> str:
    if g.delta is None or g.delta_ci95 is None:
        return f"{g.variant} vs {ref}: no test (fewer than 2 runs in a row)"
    low, high = g.delta_ci95
    head = (f"{g.variant} − {ref}: {_pts(g.delta)} points [95 % CI {_pts(low)}, {_pts(high)}] ({g.test}, "
            f"n = {g.n_pairs if g.n_pairs is not None else g.n}, p (Holm) {g.p_holm:.3g})")
    if g.verdict in ("higher", "lower"):
        return f"{head}: resolved, {g.variant} is {g.verdict}"
    mdd = f"; a difference of {board.mdd:.2f} points would be detected with 80 % power here" if board.mdd else ""
    return f"{head}: not resolved{mdd}"


def _sequential(board: Leaderboard) -> List[str]:
    seq = board.sequential or {}
    out = []
    for r in seq.get("rows", []):
        if r["status"] == "baseline":
            continue
        test = r["test"]
        if test.get("ci") is None:
            out.append(f"{r['variant']} vs {r['vs']}: {r['status']} (no look with a CI yet)")
            continue
        low, high = test["ci"]
        state = ("still adding seeds" if r["status"] == "continue" else f"{r['status']} on validation")
        out.append(f"{r['variant']} − {r['vs']}: {_pts(test['delta'])} points [repeated CI {_pts(low)}, "
                   f"{_pts(high)}] over {test['n_pairs']} pairs at the look at {r['looks'][-1]} seeds ({state})")
    return out


def verdict_text(board: Leaderboard, report: Optional[str] = None) -> str:
    """A few lines for the terminal: the comparisons against the baseline (or ``study.reference``) in words."""
    if not board.groups:
        return "No trial has completed yet." + (f"\nReport: {report}" if report else "") + "\n"
    names: Dict[str, str] = {g.config_key: g.variant for g in board.groups}
    compared = [g for g in board.groups if g.baseline_key is not None]
    n = sorted({g.n for g in board.groups})
    what = ("optimistic: the same images chose the epoch" if board.optimistic else
            "held-out test split at the epoch chosen on validation")
    head = f"Verdict on {board.metric_label} ({what}), {'/'.join(map(str, n))} seed(s) per row, {_machines(board)}:"
    if board.sequential:
        lines = _sequential(board)
    elif compared:
        lines = [_fixed(g, names.get(g.baseline_key, g.baseline_key), board) for g in compared]
    else:
        lines = ["no row has a baseline to compare with: add a no-RPE row (model.rpe.method: none) trained with the "
                 "same config, or name any row as study.reference"]
    if not board.has_uncertainty:
        lines.append("one seed per row: no confidence interval and no test; add seeds before reading a difference")
    out = [head] + [f"  {line}" for line in lines]
    if report:
        out.append(f"Report: {report} (--markdown prints it whole)")
    return "\n".join(out) + "\n"


__all__ = ["verdict_text"]
