"""Figures of the leaderboard and of the study, saved as PNG; each says why when it cannot be drawn.

matplotlib is imported lazily (a report without plots, or the sweep importing this package, should not pay
for it) and always with the Agg backend: reports are made on headless workers and in tests. Our own plots use
``matplotlib.figure.Figure`` directly, so they touch no pyplot state; Optuna's plotters use pyplot, so their
figures are closed after saving to keep a long-lived process from accumulating them.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, NamedTuple, Optional

import optuna
from optuna.trial import TrialState

from .leaderboard import Leaderboard

log = logging.getLogger(__name__)
DPI = 110


class PlotResult(NamedTuple):
    """The saved PNG, or ``None`` and the reason it was not drawn (shown in the HTML report)."""

    path: Optional[Path]
    reason: Optional[str] = None


def _skip(name: str, reason: str, level: int = logging.INFO) -> PlotResult:
    log.log(level, "plot %s skipped: %s", name, reason)
    return PlotResult(None, reason)


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig, path: Path, **kwargs: Any) -> PlotResult:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None}, **kwargs)
    return PlotResult(path)


def accuracy_vs_throughput(board: Leaderboard, path: Path) -> PlotResult:
    """The trade-off the paper argues about: accuracy gained per inference speed lost, one point per group."""
    groups = [g for g in board.groups if g.infer_img_s is not None]
    if not groups:
        return _skip("accuracy_vs_throughput", "no completed group has a measured inference throughput")
    fig = _figure(7.5, 5.0)
    ax = fig.add_subplot()
    for baseline, style in ((False, dict(fmt="o", color="tab:blue", label="iRPE")),
                            (True, dict(fmt="s", color="black", markersize=8, label="no RPE (baseline)"))):
        pts = [g for g in groups if g.baseline == baseline]
        if pts:
            ax.errorbar([g.infer_img_s for g in pts], [g.acc1_best_mean for g in pts],
                        yerr=[g.acc1_best_std or 0.0 for g in pts], capsize=3, linestyle="none", **style)
    for g in groups:
        ax.annotate(g.variant, (g.infer_img_s, g.acc1_best_mean), textcoords="offset points", xytext=(4, 4),
                    fontsize=7)
    ax.margins(x=0.2)  # room for the labels of the outermost points
    ax.set_xlabel("inference throughput (img/s)")
    ax.set_ylabel("val acc1 best (%), mean ± std over seeds")
    ax.set_title(f"{board.study_name}: accuracy vs throughput", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def accuracy_by_variant(board: Leaderboard, path: Path) -> PlotResult:
    """Ranked bars with seed spread: at a glance, which differences are larger than the noise."""
    if not board.groups:
        return _skip("accuracy_by_variant", "no completed trials")
    groups = list(reversed(board.groups))  # best at the top of a horizontal bar chart
    fig = _figure(7.5, 1.2 + 0.32 * len(groups))
    ax = fig.add_subplot()
    ax.barh([f"{g.rank}. {g.variant} (n={g.n})" for g in groups], [g.acc1_best_mean for g in groups],
            xerr=[g.acc1_best_std or 0.0 for g in groups], capsize=3,
            color=["dimgray" if g.baseline else "tab:blue" for g in groups])
    lo = min(g.acc1_best_mean - (g.acc1_best_std or 0.0) for g in groups)
    hi = max(g.acc1_best_mean + (g.acc1_best_std or 0.0) for g in groups)
    pad = max(0.5, 0.1 * (hi - lo))
    ax.set_xlim(max(0.0, lo - pad), hi + pad)  # zoom on the differences, not on the 0–lo stretch
    ax.set_xlabel("val acc1 best (%), mean ± std over seeds")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(f"{board.study_name}: accuracy by variant", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def _varied_params(study: optuna.Study) -> Dict[str, int]:
    """Number of distinct values per param over COMPLETE trials (importance is undefined without variation)."""
    seen: Dict[str, set] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        for k, v in t.params.items():
            seen.setdefault(k, set()).add(repr(v))
    return {k: len(v) for k, v in seen.items()}


def _optuna_plot(name: str, study: optuna.Study, path: Path, draw: Callable[[optuna.Study], Any]) -> PlotResult:
    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if n_complete < 2:
        return _skip(name, f"needs at least 2 complete trials, has {n_complete}")
    if not any(n > 1 for n in _varied_params(study).values()):
        return _skip(name, "no parameter takes more than one value across complete trials")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # NOTE: Optuna's plotters call plt.style.use("ggplot"), a global change; rc_context undoes it, so our own
    # plots (and the caller's) keep their look whatever ran before.
    before = set(plt.get_fignums())
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            ax = draw(study)
        except Exception as exc:  # noqa: BLE001 - Optuna refusing (e.g. no variation) must not sink the report
            for num in set(plt.get_fignums()) - before:  # only what Optuna opened, never the caller's figures
                plt.close(num)
            return _skip(name, f"optuna refused: {type(exc).__name__}: {exc}", logging.WARNING)
        fig = ax.figure
        try:
            fig.set_size_inches(7.5, 5.0)
            fig.set_dpi(DPI)
            return _save(fig, path, bbox_inches="tight")  # Optuna's layout clips long param names otherwise
        finally:
            plt.close(fig)


def optimization_history(study: optuna.Study, path: Path) -> PlotResult:
    """Optuna's objective-per-trial plot: did the sampler still improve, or has the sweep converged?"""
    from optuna.visualization.matplotlib import plot_optimization_history

    return _optuna_plot("optimization_history", study, path, plot_optimization_history)


def param_importances(study: optuna.Study, path: Path) -> PlotResult:
    """Optuna's hyperparameter importance (PED-ANOVA by default, conditional params included). Importances are
    shares that sum to 1, so with a single varied parameter the plot would only say 1.0: not drawn."""
    from optuna.visualization.matplotlib import plot_param_importances

    varied = sorted(k for k, n in _varied_params(study).items() if n > 1)
    if len(varied) < 2:
        return _skip("param_importances", f"needs two or more varied parameters, has {varied or 'none'}")

    return _optuna_plot("param_importances", study, path, plot_param_importances)


PLOTS = ("accuracy_vs_throughput", "accuracy_by_variant", "optimization_history", "param_importances")


def make_plots(study: optuna.Study, board: Leaderboard, out_dir: Path) -> Dict[str, PlotResult]:
    """All plots into ``out_dir/<name>.png``, in ``PLOTS`` order."""
    out_dir = Path(out_dir)
    return {
        "accuracy_vs_throughput": accuracy_vs_throughput(board, out_dir / "accuracy_vs_throughput.png"),
        "accuracy_by_variant": accuracy_by_variant(board, out_dir / "accuracy_by_variant.png"),
        "optimization_history": optimization_history(study, out_dir / "optimization_history.png"),
        "param_importances": param_importances(study, out_dir / "param_importances.png"),
    }
