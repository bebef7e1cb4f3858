"""Reporting: the leaderboard of a sweep, read from its Optuna storage and nothing else.

The storage is the source of truth (see ``docs/architecture.md``): any worker, at any time, during or after a sweep, can
regenerate the same report from it. ``write_report`` is therefore a pure function of the storage (plus the
caller's ``meta``): no clock, no host names, no storage URL; writing twice gives byte-identical
md/csv/json/tex. The statistics (``stats``) are pure functions of the trial values; ``stats.recompute`` redoes
them from a written report's ``trials.csv`` and ``leaderboard.json``.

The names below are imported on first use (PEP 562), so that importing one module of the package reads no Optuna or
matplotlib it does not use. Nothing here imports :mod:`irpe_bench.sweep`: the sweep layer writes a sweep's report
(``irpe_bench.sweep.leaderboard``).
"""
from __future__ import annotations

from ..lazy import lazy_names

_WHERE = {
    "to_latex": ".latex", "GroupRow": ".leaderboard", "Leaderboard": ".leaderboard", "TrialRow": ".leaderboard",
    "collect": ".leaderboard", "to_html": ".page", "PlotResult": ".plots", "make_plots": ".plots",
    "redact_data": ".render", "to_csv": ".render", "to_markdown": ".render", "recompute": ".stats",
    "study_stats": ".stats", "to_json": ".write", "write_report": ".write",
}


__getattr__, __all__ = lazy_names(__name__, _WHERE)
