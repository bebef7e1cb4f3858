"""Figures of the leaderboard and of the study, saved as PNG; each says why when it cannot be drawn.

The main figure is the forest plot: each variant's difference to its baseline with its 95 % CI and a zero line,
the picture of what the study resolved. Accuracy is drawn as dots with CIs (no bar whose truncated axis would
exaggerate), speed vs accuracy with CI bars. Nothing here ranks by noise: labels carry the rank band and n.

A library must not switch its caller's matplotlib backend, nor touch its pyplot figures or style: every plot
here is a ``matplotlib.figure.Figure`` object (no pyplot, no backend selection; ``savefig`` renders PNG with
Agg by itself), including the optimisation history and the importances, drawn here from Optuna's data rather
than with Optuna's pyplot-based plotters. They are drawn only where they mean something: no optimisation
history for a grid (the order of a grid is not progress), importances over non-seed parameters only, for
non-grid studies with enough trials.
"""
from __future__ import annotations

import logging
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional

import optuna
import optuna.importance
from optuna.trial import TrialState

from .. import keys as K
from .leaderboard import GroupRow, Leaderboard
from .objectives import objective_label
from .stats import pareto_front

log = logging.getLogger(__name__)
DPI = 110


class PlotResult(NamedTuple):
    """The saved PNG, or ``None`` and the reason it was not drawn (shown in the HTML report)."""

    path: Optional[Path]
    reason: Optional[str] = None


def _skip(name: str, reason: str, level: int = logging.DEBUG) -> PlotResult:
    # NOTE: debug: the reason is in the report, where the plot would be; a sweep's terminal ends in its verdict
    log.log(level, "plot %s skipped: %s", name, reason)
    return PlotResult(None, reason)


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig, path: Path, **kwargs: Any) -> PlotResult:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None}, **kwargs)
    return PlotResult(path)


def _ci_err(means: List[float], cis: List[Optional[List[float]]]) -> List[List[float]]:
    """Asymmetric error bars from each point's CI (zero length where n = 1: the point has no interval)."""
    return [[m - ci[0] if ci else 0.0 for m, ci in zip(means, cis)],
            [ci[1] - m if ci else 0.0 for m, ci in zip(means, cis)]]


def _yerr(groups: List[GroupRow]) -> List[List[float]]:
    return _ci_err([g.mean for g in groups], [g.ci95 for g in groups])


def _label(g: GroupRow) -> str:
    return f"{g.rank_band}. {g.variant} (n={g.n})"


def forest(board: Leaderboard, path: Path) -> PlotResult:
    """Δ to the config-matched baseline with its 95 % CI per variant, and the zero line: what is resolved."""
    rows = [g for g in board.groups if g.delta is not None]
    if not rows:
        return _skip("forest", "no variant has a config-matched baseline")
    rows = list(reversed(rows))  # best at the top
    fig = _figure(9.0, 1.6 + 0.36 * len(rows))
    ax = fig.add_subplot()
    ys = list(range(len(rows)))
    for y, g in zip(ys, rows):
        color = "tab:blue" if g.significant else "gray"
        if g.delta_ci95 is not None:
            ax.errorbar([g.delta], [y], xerr=[[g.delta - g.delta_ci95[0]], [g.delta_ci95[1] - g.delta]],
                        fmt="o", color=color, capsize=3)
        else:
            ax.plot([g.delta], [y], marker="x", color=color, linestyle="none")
    ax.axvline(0.0, color="black", linewidth=1)
    labels = [f"{g.variant} (n={g.n_pairs or g.n}{', ' + g.test if g.test else ', no test'})" for g in rows]
    ax.set_yticks(ys, labels, fontsize=7)
    ax.set_xlabel(f"Δ {board.metric_label} vs baseline (points), 95 % CI")
    fig.suptitle(f"{board.study_name}: difference to the baseline (blue: significant after Holm)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def accuracy_vs_throughput(board: Leaderboard, path: Path) -> PlotResult:
    """The trade-off the paper argues about: accuracy (mean, 95 % CI) against median train speed, for the groups
    timed on the most common device key only (speeds of different machines are not one axis)."""
    timed = [g for g in board.groups if g.train_img_s is not None and g.device is not None]
    if not timed:
        return _skip("accuracy_vs_throughput", "no completed group was timed on a single device")
    devices = Counter(g.device for g in timed)
    device = sorted(devices, key=lambda d: (-devices[d], d))[0]
    groups = [g for g in timed if g.device == device]
    fig = _figure(7.5, 5.0)
    ax = fig.add_subplot()
    for baseline, style in ((False, dict(fmt="o", color="tab:blue", label="iRPE")),
                            (True, dict(fmt="s", color="black", markersize=8, label="no RPE (baseline)"))):
        pts = [g for g in groups if g.baseline == baseline]
        if pts:
            xerr = [[g.train_img_s - g.train_img_s_range[0] for g in pts],
                    [g.train_img_s_range[1] - g.train_img_s for g in pts]]
            ax.errorbar([g.train_img_s for g in pts], [g.mean for g in pts], yerr=_yerr(pts), xerr=xerr,
                        capsize=3, linestyle="none", **style)
    for g in groups:
        ax.annotate(_label(g), (g.train_img_s, g.mean), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.margins(x=0.2)  # room for the labels of the outermost points
    ax.set_xlabel("train throughput (img/s), median (min–max) over trials")
    ax.set_ylabel(f"{board.metric_label} (%), mean and 95 % CI")
    ax.set_title(f"{board.study_name}: accuracy vs throughput on {device}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def accuracy_by_variant(board: Leaderboard, path: Path) -> PlotResult:
    """A dot per group with its 95 % CI, labelled with the rank band: which rows the data separate."""
    if not board.groups:
        return _skip("accuracy_by_variant", "no completed trials")
    groups = list(reversed(board.groups))  # best at the top
    fig = _figure(7.5, 1.2 + 0.32 * len(groups))
    ax = fig.add_subplot()
    ys = list(range(len(groups)))
    ax.errorbar([g.mean for g in groups], ys, xerr=_yerr(groups), fmt="none", ecolor="gray", capsize=3)
    ax.scatter([g.mean for g in groups], ys, color=["black" if g.baseline else "tab:blue" for g in groups],
               zorder=3)
    ax.set_yticks(ys, [_label(g) for g in groups], fontsize=7)
    ax.set_xlabel(f"{board.metric_label} (%), mean and 95 % CI over seeds")
    ax.set_title(f"{board.study_name}: accuracy by variant (label: rank band)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def accuracy_by_size(board: Leaderboard, path: Path) -> PlotResult:
    """Test top-1 against image size, one line per row (mean and 95 % CI at each size of ``eval.img_sizes``):
    how each position encoding carries to resolutions it was not trained at."""
    rows = [g for g in board.groups if g.by_img_size]
    if not rows:
        return _skip("accuracy_by_size", "no row was tested at another image size")
    fig = _figure(7.5, 5.0)
    ax = fig.add_subplot()
    for i, g in enumerate(rows):
        sizes = sorted(g.by_img_size, key=int)
        st = [g.by_img_size[s] for s in sizes]
        means = [x["mean"] for x in st]
        err = _ci_err(means, [x["ci95"] for x in st])
        shift = (i - (len(rows) - 1) / 2) * 0.15  # points of one size side by side, not on top of each other
        ax.errorbar([int(s) + shift for s in sizes], means, yerr=err, marker="s" if g.baseline else "o",
                    capsize=3, label=f"{g.variant} (n={g.n})", color="black" if g.baseline else None)
    ax.set_xticks(board.img_sizes or [])
    ax.set_xlabel("test image size (pixels); the model was trained at its own size")
    ax.set_ylabel("test acc1 (%) at the checkpoint chosen on validation, mean and 95 % CI")
    ax.set_title(f"{board.study_name}: accuracy against image size", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _xerr(groups: List[GroupRow], key: str) -> Optional[List[List[float]]]:
    """The min–max range of a speed over the group's runs; none for params / MACs (one per configuration)."""
    if key not in ("train_img_s", "infer_img_s"):
        return None
    spans = [getattr(g, f"{key}_range") or [getattr(g, key)] * 2 for g in groups]
    return [[getattr(g, key) - s[0] for g, s in zip(groups, spans)],
            [s[1] - getattr(g, key) for g, s in zip(groups, spans)]]


def pareto(board: Leaderboard, path: Path) -> PlotResult:
    """A multi-objective study's trade-off: accuracy (group mean, 95 % CI) against each cost objective, one panel
    per cost; the groups on the front (``pareto``, over all objectives) are filled and joined by the step line
    of the front in that panel, the others hollow, infeasible ones crossed; every point is labelled."""
    objs = board.objectives or []
    acc = next((o for o in objs if o["key"] == "mean"), None)
    costs = [o for o in objs if o is not acc]
    if len(objs) < 2 or acc is None:
        return _skip("pareto", "not a multi-objective study with an accuracy objective")
    fig = _figure(7.5 * len(costs), 5.0)
    axes = fig.subplots(1, len(costs), squeeze=False)[0]
    for ax, cost in zip(axes, costs):
        key = cost["key"]
        pts = [g for g in board.groups if getattr(g, key, None) is not None]
        for flag, style in ((True, dict(fmt="o", color="tab:red", label="on the front")),
                            (False, dict(fmt="o", color="gray", mfc="white", label="dominated")),
                            (None, dict(fmt="o", color="gray", mfc="white", label="not compared"))):
            sub = [g for g in pts if g.pareto is flag and g.feasible is not False]
            if sub:
                ax.errorbar([getattr(g, key) for g in sub], [g.mean for g in sub], yerr=_yerr(sub),
                            xerr=_xerr(sub, key), capsize=3, linestyle="none", **style)
        bad = [g for g in pts if g.feasible is False]
        if bad:
            ax.errorbar([getattr(g, key) for g in bad], [g.mean for g in bad], yerr=_yerr(bad), fmt="x",
                        color="black", capsize=3, linestyle="none", label="infeasible")
        front = [g for g in pts if g.pareto]
        flags = pareto_front([[getattr(g, key), g.mean] for g in front], [cost["direction"], acc["direction"]])
        line = sorted((getattr(g, key), g.mean) for g, f in zip(front, flags) if f)
        if line:  # the front of this panel's two objectives, as the staircase of what is attainable
            ax.step([x for x, _ in line], [y for _, y in line], where="post" if cost["direction"] == "minimize"
                    else "pre", color="tab:red", alpha=0.6)
        for g in pts:
            ax.annotate(_label(g), (getattr(g, key), g.mean), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.margins(x=0.2)
        ax.set_xlabel(f"{objective_label(key, board.metric_label)} ({cost['direction']})")
        ax.set_ylabel(f"{board.metric_label} (%), group mean and 95 % CI ({acc['direction']})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{board.study_name}: Pareto front over group means (accuracy: {board.metric_label})",
                 fontsize=10)
    return _save(fig, path)


MIN_IMPORTANCE_TRIALS = 20  # below this an importance estimate is noise dressed as a ranking


def _is_grid(study: optuna.Study, board: Leaderboard) -> bool:
    """A grid study (sweep attribute ``sampler: grid``, or Optuna's GridSampler marks on the trials)."""
    if str(board.sweep.get("sampler", "")).lower() == "grid":
        return True
    return any("grid_id" in t.system_attrs for t in study.get_trials(deepcopy=False))


def _is_seed(name: str) -> bool:
    return name == "seed" or name.endswith(".seed")


def _varied_params(study: optuna.Study) -> Dict[str, int]:
    """Number of distinct values per non-seed param over COMPLETE trials (the seed is noise, not a choice)."""
    seen: Dict[str, set] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        for k, v in t.params.items():
            if not _is_seed(k):
                seen.setdefault(k, set()).add(repr(v))
    return {k: len(v) for k, v in seen.items()}


def importance_params(study: optuna.Study) -> List[str]:
    """The parameters an importance plot may show: varied across COMPLETE trials, never the seed."""
    return sorted(k for k, n in _varied_params(study).items() if n > 1)


def optimization_history(study: optuna.Study, board: Leaderboard, path: Path) -> PlotResult:
    """Objective per trial and the best so far: did the sampler still improve, or has the sweep converged?
    (Not for a grid: its order is an enumeration, not progress.)"""
    if _is_grid(study, board):
        return _skip("optimization_history", "a grid study: trial order is not optimisation progress")
    if board.objectives:
        return _skip("optimization_history", "a multi-objective study: no single best so far (see the Pareto plot)")
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if len(done) < 2:
        return _skip("optimization_history", f"needs at least 2 complete trials, has {len(done)}")
    done.sort(key=lambda t: t.number)
    values = [K.percent(t.value, t.user_attrs) for t in done]
    best, running = [], float("-inf") if board.direction == "maximize" else float("inf")
    for v in values:
        running = max(running, v) if board.direction == "maximize" else min(running, v)
        best.append(running)
    fig = _figure(7.5, 4.5)
    ax = fig.add_subplot()
    ax.scatter([t.number for t in done], values, s=14, color="tab:blue", label="trial")
    ax.step([t.number for t in done], best, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial number")
    ax.set_ylabel("objective: val acc1 best (%)")
    ax.set_title(f"{board.study_name}: optimisation history", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def param_importances(study: optuna.Study, board: Leaderboard, path: Path) -> PlotResult:
    """Optuna's hyperparameter importance (PED-ANOVA by default) over the non-seed parameters, as shares
    on a 0–1 axis. Only for non-grid studies with two or more varied parameters and enough trials: a grid's
    factors are better read from the forest plot, and a share of 1.0 for a single parameter says nothing."""
    name = "param_importances"
    if _is_grid(study, board):
        return _skip(name, "a grid study: read the factors from the forest plot")
    if board.objectives:
        return _skip(name, "a multi-objective study: importances are per objective (optuna-dashboard shows them)")
    varied = importance_params(study)
    if len(varied) < 2:
        return _skip(name, f"needs two or more varied non-seed parameters, has {varied or 'none'}")
    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if n_complete < MIN_IMPORTANCE_TRIALS:
        return _skip(name, f"needs at least {MIN_IMPORTANCE_TRIALS} complete trials, has {n_complete}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            shares = optuna.importance.get_param_importances(study, params=varied)
        except Exception as exc:  # noqa: BLE001 - Optuna refusing must not sink the report
            return _skip(name, f"optuna refused: {type(exc).__name__}: {exc}", logging.WARNING)
    items = sorted(shares.items(), key=lambda kv: (kv[1], kv[0]))
    fig = _figure(7.5, 1.2 + 0.35 * len(items))
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("importance (share, PED-ANOVA), seed excluded")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(f"{board.study_name}: parameter importances ({n_complete} trials)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


PLOTS = ("forest", "accuracy_by_variant", "accuracy_vs_throughput", "optimization_history", "param_importances",
         "pareto", "accuracy_by_size")


def make_plots(study: optuna.Study, board: Leaderboard, out_dir: Path) -> Dict[str, PlotResult]:
    """All plots into ``out_dir/<name>.png``, in ``PLOTS`` order (the forest plot, the main figure, first)."""
    out_dir = Path(out_dir)
    return {
        "forest": forest(board, out_dir / "forest.png"),
        "accuracy_by_variant": accuracy_by_variant(board, out_dir / "accuracy_by_variant.png"),
        "accuracy_vs_throughput": accuracy_vs_throughput(board, out_dir / "accuracy_vs_throughput.png"),
        "optimization_history": optimization_history(study, board, out_dir / "optimization_history.png"),
        "param_importances": param_importances(study, board, out_dir / "param_importances.png"),
        **({"pareto": pareto(board, out_dir / "pareto.png")} if board.objectives else {}),
        **({"accuracy_by_size": accuracy_by_size(board, out_dir / "accuracy_by_size.png")} if board.img_sizes else {}),
    }
